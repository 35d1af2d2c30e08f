"""LwF-style distillation: KL to the previous step's model on the current batch's target positions."""

from __future__ import annotations

import torch

from cmml.families.micl.methods.base import MiclMethod, kl_div
from cmml.families.micl.model import Example

HPARAMS = ("lambda_lwf", "temperature")


class Method(MiclMethod):
    """CE + ``lambda_lwf`` · T² · KL(old ‖ new) on the target tokens of the current inputs."""

    NEEDS_PREVIOUS = True

    def loss(self, batch: list[Example]) -> tuple[torch.Tensor, dict[str, float]]:
        m, dev = self.ctx.model, self.ctx.device
        logits, _, labels = m.forward_batch(batch, dev)
        ce = m.target_loss(logits, labels)
        if self.ctx.previous is None:
            return ce, {"ce": ce.item()}
        with torch.no_grad():
            old, _, _ = self.ctx.previous.forward_batch(batch, dev)
        rows = labels[:, 1:] != -100
        kl = kl_div(logits[:, :-1][rows], old[:, :-1][rows], self.ctx.hp["temperature"])
        return ce + self.ctx.hp["lambda_lwf"] * kl, {"ce": ce.item(), "kl": kl.item()}
