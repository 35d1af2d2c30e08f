"""Suite-wide guard: an empty collection is an error, never a silent pass (pytest exit 5)."""

from __future__ import annotations

import pytest


def pytest_collection_finish(session: pytest.Session) -> None:
    if not session.items and not session.config.option.collectonly:
        raise pytest.UsageError("no tests were collected: the cmml suite must never pass empty")
