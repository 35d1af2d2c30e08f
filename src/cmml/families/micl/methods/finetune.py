"""Sequential LoRA fine-tuning: each task trains the adapters and LoRA from the previous step's state."""

from __future__ import annotations

from cmml.families.micl.methods.base import MiclMethod


class Method(MiclMethod):
    """Plain cross-entropy on the current task (the base class's behaviour)."""
