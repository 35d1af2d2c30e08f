"""Joint training on every task of the order at once: the upper bound (one train stage, one evaluated row)."""

from __future__ import annotations

from cmml.families.micl.methods.base import MiclMethod


class Method(MiclMethod):
    """Cross-entropy on the union of all tasks' training samples."""

    JOINT = True
