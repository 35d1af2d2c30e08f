"""cmml: continual missing-modality learning, reproducible end to end."""

__version__ = "0.1.0"
