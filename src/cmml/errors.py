"""One exception type for every user-facing failure: the CLI prints its message and exits 2."""


class CmmlError(Exception):
    """A bad input (file, key, value) with a message that names it and says what was expected."""


class ConfigError(CmmlError):
    """params.yaml (or another config) has a missing key, a wrong type or a value out of range."""


class DataError(CmmlError):
    """A data file, table or checkpoint is missing, corrupt or inconsistent with its record."""
