"""SSF per task: one scale-and-shift set per continual task on the frozen backbone (docs/robust.md §6).

The adapter module of the robust family (:mod:`cmml.models.adapters`) with the task as the key:
task t trains its own (gamma, beta) at every feature site plus the shared linear head, every
earlier set stays frozen. The logits of task j's classes are computed from the features adapted
by set j (one backbone pass per set), so what an earlier task learnt keeps its own features.
With ``init_from_previous`` a task's set starts from the previous task's values instead of the
``init`` draw (identity, or the SSF paper's N(1, std) / N(0, std)).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from cmml.errors import ConfigError
from cmml.methods.base import Method, TaskContext, TaskInfo
from cmml.models.adapters import SSF, SSF_INITS, train_only
from cmml.models.backbone import Backbone


class SSFPerTask(Method):
    """Frozen backbone, an SSF set per task, a linear head over every class."""

    NAME = "ssf"
    HPARAMS = {"init": str, "init_std": float, "init_from_previous": bool}

    @classmethod
    def check_hparams(cls, hp: dict[str, Any], where: str) -> None:
        super().check_hparams(hp, where)
        if hp["init"] not in SSF_INITS:
            raise ConfigError(f"{where}.init must be one of {list(SSF_INITS)}, got {hp['init']!r}")
        if hp["init_std"] < 0:
            raise ConfigError(f"{where}.init_std must be >= 0, got {hp['init_std']}")

    def __init__(self, backbone: Backbone, info: TaskInfo, hp: dict[str, Any]):
        super().__init__(backbone, info, hp)
        self.keys = [f"task{t}" for t in range(info.num_tasks)]
        self.adapters = SSF(backbone, self.keys, hp["init"], hp["init_std"])

    def begin_task(self, ctx: TaskContext) -> None:
        """Only this task's set (and the head) trains; optionally it starts from the previous set."""
        super().begin_task(ctx)
        t = ctx.task
        if self.hp["init_from_previous"] and t > 0 and ctx.data is not None:
            with torch.no_grad():
                for mine, prev in zip(self.adapters.set_parameters(self.keys[t]), self.adapters.set_parameters(self.keys[t - 1])):
                    mine.copy_(prev)
        train_only(self.adapters, self.keys[t])

    def task_logits(self, batch: Any, upto: int) -> Tensor:
        """[B, num_classes]: task j's columns from set j for j <= ``upto``, later columns zero."""
        per_set = [self.head(self.adapters.encode(self.keys[j], batch.input_ids, batch.attention_mask,
                                                  batch.pixel_values).text_cls) for j in range(upto + 1)]
        out = torch.zeros_like(per_set[0])
        for j, z in enumerate(per_set):
            lo, hi = self.info.offsets[j], self.info.offsets[j + 1]
            out[:, lo:hi] = z[:, lo:hi]
        return out

    def logits(self, batch: Any) -> Tensor:
        return self.task_logits(batch, self.info.num_tasks - 1)

    def loss(self, batch: Any, task: int) -> tuple[Tensor, dict[str, float]]:
        cls = self.classification_loss(self.task_logits(batch, task), batch.labels, task)
        return cls, {"cls": float(cls.detach())}


METHOD = SSFPerTask
