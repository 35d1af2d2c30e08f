"""The micl method interface: how one task's batches become a loss, plus hooks around epochs and tasks.

A method sees a :class:`MethodContext` (its hyper-parameters resolved for this step, the model, the
frozen previous-step model when it asked for one, the seeded generator, the task sequence). Shared
losses (temperature KL) live here so that every method computes them the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn import functional as F

from cmml.families.micl.model import Example, MiclModel

HPARAMS = ("epochs", "batch_size", "lr", "weight_decay", "warmup")


@dataclass
class MethodContext:
    """What a method gets for one step of one run."""

    hp: dict[str, Any]
    model: MiclModel
    step: int
    tasks: list[str]  # the order's task names; tasks[step] is the current one
    generator: torch.Generator
    device: torch.device
    previous: MiclModel | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # the method state stored with the previous checkpoint
    data: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # task name -> its training samples
    instructions: list[str] = field(default_factory=list)  # the text-only instruction corpus
    generation: dict[str, Any] = field(default_factory=dict)  # beam-search settings (micl.generation)


def kl_div(new: torch.Tensor, old: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T² · KL(softmax(old/T) ‖ softmax(new/T))`` over the vocabulary, mean over rows ((N, V) logits)."""
    if new.shape[0] == 0:
        return new.sum() * 0.0
    t = float(temperature)
    logp_new = F.log_softmax(new.float() / t, dim=-1)
    logp_old = F.log_softmax(old.float() / t, dim=-1)
    return (logp_old.exp() * (logp_old - logp_new)).sum(-1).mean() * t * t


class MiclMethod:
    """Sequential LoRA fine-tuning; subclasses add regularisers, pseudo samples, fusion or replay."""

    JOINT = False  # one stage training every task at once
    NEEDS_PREVIOUS = False  # gets a frozen copy of the previous step's model

    def __init__(self, ctx: MethodContext):
        self.ctx = ctx

    def merge_at_start(self) -> bool:
        """Whether the step starts by folding the LoRA update into the base weights (see MiclModel.merge_lora)."""
        return False

    def begin_task(self) -> None:
        """Called once before the first batch."""

    def loss(self, batch: list[Example]) -> tuple[torch.Tensor, dict[str, float]]:
        """The training loss of one batch and its named parts."""
        logits, _, labels = self.ctx.model.forward_batch(batch, self.ctx.device)
        ce = self.ctx.model.target_loss(logits, labels)
        return ce, {"ce": ce.item()}

    def progress(self) -> dict[str, Any]:
        """What the method accumulates over the epochs of a step (kept in the resume state after each epoch)."""
        return {}

    def restore_progress(self, state: dict[str, Any]) -> None:
        """Restore :meth:`progress` when a killed step resumes."""

    def end_epoch(self, epoch: int) -> None:
        """Called after every epoch."""

    def end_task(self) -> dict[str, Any]:
        """Called after the last epoch; returns the method state to store with the checkpoint."""
        return {}
