"""LwF, learning without forgetting (Li & Hoiem, ECCV 2016 / TPAMI 2018), on sequential fine-tuning.

From task 1 on, the loss adds ``alpha`` times a distillation term: the frozen model as the
previous task left it (``NEEDS_PREVIOUS``) scores the current batch, and the current model's
logits over the old classes are pulled towards it at temperature ``temperature``. The old
classes form one group in the class-incremental scenario (all of [0, offsets[t])) and one group
per earlier task in the task-incremental one (the paper's one output head per old task); the
term is the mean over groups.

* Single-label: KL(softmax(z_old / T) || softmax(z / T)) per sample, averaged over the batch.
  The paper writes the cross-entropy to the soft targets; the KL differs from it by the targets'
  entropy, a constant, so the gradient is the same and the term is 0 when both models agree.
* Multi-label: each old class is a Bernoulli of probability sigmoid(z / T); the term is the
  binary KL to sigmoid(z_old / T), averaged over the batch and the group's classes.

No T^2 gradient rescaling (the paper has none), and no warm-up phase that trains the new head
alone first (cmml's head is shared by every task and starts training with the task).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from cmml.errors import ConfigError
from cmml.methods.base import Method, TaskContext, TaskInfo
from cmml.methods.finetune import FineTune
from cmml.models.backbone import Backbone


def distillation(logits: Tensor, targets: Tensor, groups: list[tuple[int, int]], temperature: float,
                 multilabel: bool) -> Tensor:
    """Mean over ``groups`` (column ranges) of the KL from the target logits to ``logits`` at ``temperature``."""
    terms = []
    for lo, hi in groups:
        z, zt = logits[:, lo:hi].float() / temperature, targets[:, lo:hi].float() / temperature
        if multilabel:
            p = torch.sigmoid(zt)
            # KL(Bern(p) || Bern(q)) = BCE(q; p) - H(p), both from the logits (numerically stable)
            kl = (F.binary_cross_entropy_with_logits(z, p, reduction="none")
                  - F.binary_cross_entropy_with_logits(zt, p, reduction="none"))
            terms.append(kl.mean())
        else:
            terms.append(F.kl_div(F.log_softmax(z, dim=1), F.log_softmax(zt, dim=1), reduction="batchmean",
                                  log_target=True))
    return torch.stack(terms).mean()


class LwF(FineTune):
    """Fine-tuning (head, optionally the backbone) plus distillation of the previous model's old-class logits."""

    NAME = "lwf"
    NEEDS_PREVIOUS = True
    HPARAMS: ClassVar[dict[str, type | tuple[type, ...]]] = {**FineTune.HPARAMS, "alpha": float, "temperature": float}

    @classmethod
    def check_hparams(cls, hp: dict[str, Any], where: str) -> None:
        """Distillation weight >= 0, temperature > 0."""
        super().check_hparams(hp, where)
        if hp["alpha"] < 0:
            raise ConfigError(f"{where}.alpha must be >= 0, got {hp['alpha']}")
        if hp["temperature"] <= 0:
            raise ConfigError(f"{where}.temperature must be > 0, got {hp['temperature']}")

    def __init__(self, backbone: Backbone, info: TaskInfo, hp: dict[str, Any]):
        super().__init__(backbone, info, hp)
        self.check_hparams(hp, "lwf")
        self._previous: tuple[Method, ...] = ()  # a tuple, so the frozen copy is no submodule (not checkpointed)

    def begin_task(self, ctx: TaskContext) -> None:
        """Keep the previous model for the task's distillation (training contexts of task > 0 carry one)."""
        super().begin_task(ctx)
        if ctx.task > 0 and ctx.data is not None and ctx.previous is None:
            raise RuntimeError("lwf: task > 0 needs the previous model (TaskContext.previous)")
        self._previous = (ctx.previous,) if ctx.previous is not None else ()

    def end_task(self, ctx: TaskContext) -> None:
        """Drop the previous model (a later frozen copy must not nest it)."""
        self._previous = ()

    def old_groups(self, task: int) -> list[tuple[int, int]]:
        """Column ranges distilled at ``task``: all old classes, or each old task's (task-incremental)."""
        offsets = self.info.offsets
        if self.info.scenario == "task":
            return [(offsets[u], offsets[u + 1]) for u in range(task)]
        return [(0, offsets[task])]

    def distillation_loss(self, logits: Tensor, batch: Any, task: int) -> Tensor:
        """The distillation term on ``batch`` given the current model's ``logits``."""
        with torch.no_grad():
            targets = self._previous[0].logits(batch)
        return distillation(logits, targets, self.old_groups(task), self.hp["temperature"], self.info.multilabel)

    def loss(self, batch: Any, task: int) -> tuple[Tensor, dict[str, float]]:
        """Classification loss, plus ``alpha`` times the distillation term when a previous model is held."""
        logits = self.logits(batch)
        cls = self.classification_loss(logits, batch.labels, task)
        logs = {"cls": float(cls.detach())}
        if task == 0 or not self._previous:
            return cls, logs
        kd = self.distillation_loss(logits, batch, task)
        logs["kd"] = float(kd.detach())
        return cls + self.hp["alpha"] * kd, logs


METHOD = LwF
