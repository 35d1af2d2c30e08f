"""Experience replay: a small memory of each earlier task's training samples, mixed into every batch."""

from __future__ import annotations

import torch

from cmml.families.micl.examples import to_example
from cmml.families.micl.methods.base import MiclMethod
from cmml.families.micl.model import Example

HPARAMS = ("memory_per_task", "replay_per_batch")


class Method(MiclMethod):
    """CE on the batch plus ``replay_per_batch`` samples drawn from the memory of earlier tasks."""

    def begin_task(self) -> None:
        c = self.ctx
        self.memory: list[dict] = []
        for task in c.tasks[: c.step]:
            samples = c.data[task]
            keep = torch.randperm(len(samples), generator=torch.Generator().manual_seed(c.step * 7919 + len(samples)))
            self.memory += [samples[int(i)] for i in keep[: c.hp["memory_per_task"]]]

    def loss(self, batch: list[Example]) -> tuple[torch.Tensor, dict[str, float]]:
        if self.memory:
            picks = torch.randint(len(self.memory), (self.ctx.hp["replay_per_batch"],), generator=self.ctx.generator)
            batch = batch + [to_example(self.memory[int(i)], self.ctx.generator) for i in picks]
        return super().loss(batch)
