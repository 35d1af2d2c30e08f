"""Joint training (the upper bound): one model trained on the union of all tasks at once.

Registered with ``joint=True``: the plan gives it a single train stage (the last task index)
whose data is every task's training split, and the loss spans all classes.
"""

from __future__ import annotations

from typing import Any

from cmml.errors import ConfigError
from cmml.methods.finetune import FineTune


class Joint(FineTune):
    """Fine-tuning on all tasks together (head only or full backbone)."""

    NAME = "joint"

    @classmethod
    def check_hparams(cls, hp: dict[str, Any], where: str) -> None:
        """Joint training sees every class at once: there are no old logits to mask."""
        super().check_hparams(hp, where)
        if hp["mask_old_logits"]:
            raise ConfigError(f"{where}.mask_old_logits must be false for joint training")


METHOD = Joint
