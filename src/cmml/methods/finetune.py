"""Sequential fine-tuning (the lower bound): train on each task in turn, nothing against forgetting.

Two variants (``train_backbone``): head only on the frozen backbone, or the full backbone too.
"""

from __future__ import annotations

from typing import Any

from cmml.methods.base import Method, TaskInfo
from cmml.models.backbone import Backbone


class FineTune(Method):
    """Linear head on text [CLS]; optionally the whole ViLT is trained as well."""

    NAME = "finetune"
    HPARAMS = {"train_backbone": bool}

    def __init__(self, backbone: Backbone, info: TaskInfo, hp: dict[str, Any]):
        super().__init__(backbone, info, hp)
        if hp["train_backbone"]:
            backbone.requires_grad_(True)


METHOD = FineTune
