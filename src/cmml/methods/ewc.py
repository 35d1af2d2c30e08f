"""EWC, elastic weight consolidation (Kirkpatrick et al., PNAS 2017), on sequential fine-tuning.

The loss of task t > 0 adds ``lambda / 2 * sum_i F_i (theta_i - theta*_i)^2`` over every trained
parameter (the head, and the backbone with ``train_backbone``). After each task,
:meth:`EWC.end_task` estimates the diagonal empirical Fisher of that task: the mean over
``fisher_samples`` of the task's training samples (all of them when 0; otherwise a subset drawn
with the run's generator) of the squared per-sample gradient of the log-likelihood of the sample's
true label, in eval mode. One sample per backward pass, so the estimate is the per-sample Fisher,
not the square of batch-mean gradients. The log-likelihood is the one the task trained: the
softmax over the task's loss columns (single-label) or the sum of the per-class Bernoulli
log-likelihoods over them (multi-label), with ``mask_old_logits`` applied as in training.

Tasks accumulate online: ``F <- gamma * F + F_t`` and the anchor ``theta*`` becomes the parameters
after task t (one penalty, not one per task). ``gamma: 1`` sums the Fishers, ``gamma < 1`` is
online EWC's decay (Schwarz et al., 2018). Fisher and anchor are registered buffers
(``ewc_fisher__<param>``, ``ewc_anchor__<param>``), so checkpoints carry them to the next task.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from cmml.errors import ConfigError
from cmml.methods.base import TaskContext, TaskInfo
from cmml.methods.finetune import FineTune
from cmml.models.backbone import Backbone


def buffer_key(kind: str, param: str) -> str:
    """The buffer name of a parameter's Fisher diagonal (``kind='fisher'``) or anchor (``'anchor'``)."""
    return f"ewc_{kind}__{param.replace('.', '__')}"


class EWC(FineTune):
    """Fine-tuning (head, optionally the backbone) plus the EWC penalty; see the module docstring."""

    NAME = "ewc"
    HPARAMS: ClassVar[dict[str, type | tuple[type, ...]]] = {
        **FineTune.HPARAMS, "ewc_lambda": float, "gamma": float, "fisher_samples": int,
    }

    @classmethod
    def check_hparams(cls, hp: dict[str, Any], where: str) -> None:
        """Penalty weight >= 0, decay in [0, 1], sample count >= 0 (0 = all)."""
        super().check_hparams(hp, where)
        if hp["ewc_lambda"] < 0:
            raise ConfigError(f"{where}.ewc_lambda must be >= 0, got {hp['ewc_lambda']}")
        if not 0.0 <= hp["gamma"] <= 1.0:
            raise ConfigError(f"{where}.gamma must be in [0, 1] (1: sum the tasks' Fishers), got {hp['gamma']}")
        if hp["fisher_samples"] < 0:
            raise ConfigError(f"{where}.fisher_samples must be >= 0 (0: every training sample), "
                              f"got {hp['fisher_samples']}")

    def __init__(self, backbone: Backbone, info: TaskInfo, hp: dict[str, Any]):
        super().__init__(backbone, info, hp)
        self.check_hparams(hp, "ewc")
        self.anchored = [name for name, p in self.named_parameters() if p.requires_grad]
        for name, p in self.named_parameters():
            if p.requires_grad:
                self.register_buffer(buffer_key("fisher", name), torch.zeros_like(p))
                self.register_buffer(buffer_key("anchor", name), p.detach().clone())

    def penalty(self) -> Tensor:
        """``1/2 * sum_i F_i (theta_i - theta*_i)^2`` (without lambda)."""
        params = dict(self.named_parameters())
        total = params[self.anchored[0]].new_zeros(())
        for name in self.anchored:
            diff = params[name] - self.get_buffer(buffer_key("anchor", name))
            total = total + (self.get_buffer(buffer_key("fisher", name)) * diff.pow(2)).sum()
        return 0.5 * total

    def loss(self, batch: Any, task: int) -> tuple[Tensor, dict[str, float]]:
        """Classification loss, plus ``ewc_lambda`` times the penalty after the first task."""
        cls, logs = super().loss(batch, task)
        if task == 0:
            return cls, logs
        pen = self.penalty()
        logs["ewc"] = float(pen.detach())
        return cls + self.hp["ewc_lambda"] * pen, logs

    def nll(self, logits: Tensor, labels: Tensor, task: int) -> Tensor:
        """Negative log-likelihood of one sample's true label(s) under the task's loss columns."""
        if not self.info.multilabel:
            return self.classification_loss(logits, labels, task)
        lo, hi = self.info.columns(task, task)
        start = self.info.offsets[task] if self.hp["mask_old_logits"] else lo
        return F.binary_cross_entropy_with_logits(logits[:, start:hi].float(), labels[:, start:hi].float(),
                                                  reduction="sum")

    def fisher(self, ctx: TaskContext) -> dict[str, Tensor]:
        """Diagonal empirical Fisher of task ``ctx.task`` from ``ctx.data`` (per-sample gradients, eval mode)."""
        data, n = ctx.data, len(ctx.data)
        k = self.hp["fisher_samples"]
        if k and k < n:
            idx = torch.randperm(n, generator=ctx.generator)[:k].sort().values
        else:
            idx = torch.arange(n)
        params = [p for name, p in self.named_parameters() if name in self.anchored]
        sums = [torch.zeros_like(p) for p in params]
        was_training = self.training
        self.eval()
        for i in idx.tolist():
            b = data.batch(torch.tensor([i])).to(ctx.device)
            grads = torch.autograd.grad(self.nll(self.logits(b), b.labels, ctx.task), params, allow_unused=True)
            for s, g in zip(sums, grads):
                if g is not None:
                    s.add_(g.detach().pow(2))
        self.train(was_training)
        return {name: s / max(len(idx), 1) for name, s in zip(self.anchored, sums)}

    def end_task(self, ctx: TaskContext) -> None:
        """Fold the task's Fisher into the running one (``F <- gamma F + F_t``); anchor at the current parameters."""
        fisher = self.fisher(ctx)
        params = dict(self.named_parameters())
        with torch.no_grad():
            for name in self.anchored:
                acc = self.get_buffer(buffer_key("fisher", name))
                acc.mul_(self.hp["gamma"]).add_(fisher[name])
                self.get_buffer(buffer_key("anchor", name)).copy_(params[name])


METHOD = EWC
