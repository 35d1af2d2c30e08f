"""EWC: a quadratic penalty pulling the trainable weights to their values after earlier tasks.

The diagonal Fisher of each task (squared gradients of its loss, averaged over ``fisher_batches``
batches) is summed over tasks and stored with the checkpoint together with the anchor weights.
"""

from __future__ import annotations

from typing import Any

import torch

from cmml.families.micl.examples import to_example
from cmml.families.micl.methods.base import MiclMethod
from cmml.families.micl.model import Example

HPARAMS = ("lambda_ewc", "fisher_batches")


class Method(MiclMethod):
    """CE + ``lambda_ewc``/2 · Σ F (θ − θ*)²."""

    def begin_task(self) -> None:
        self.fisher = self.ctx.extra.get("fisher", {})
        self.anchor = self.ctx.extra.get("anchor", {})

    def loss(self, batch: list[Example]) -> tuple[torch.Tensor, dict[str, float]]:
        ce, parts = super().loss(batch)
        if not self.fisher:
            return ce, parts
        params = self.ctx.model.trainable()
        pen = sum((self.fisher[n].to(p.device) * (p - self.anchor[n].to(p.device)) ** 2).sum() for n, p in params.items())
        return ce + self.ctx.hp["lambda_ewc"] / 2 * pen, {**parts, "ewc": pen.item()}

    def end_task(self) -> dict[str, Any]:
        c = self.ctx
        params = c.model.trainable()
        fisher = {n: torch.zeros_like(p) for n, p in params.items()}
        samples = c.data[c.tasks[c.step]]
        bs, nb = c.hp["batch_size"], c.hp["fisher_batches"]
        used = 0
        for b in range(min(nb, -(-len(samples) // bs))):
            batch = [to_example(s, None) for s in samples[b * bs:(b + 1) * bs]]
            c.model.zero_grad()
            ce, _ = super().loss(batch)
            ce.backward()
            for n, p in params.items():
                if p.grad is not None:
                    fisher[n] += p.grad.detach() ** 2
            used += 1
        c.model.zero_grad()
        total = {n: self.fisher.get(n, torch.zeros_like(f)) + f / max(used, 1) for n, f in fisher.items()}
        return {"fisher": total, "anchor": {n: p.detach().clone() for n, p in params.items()}}
