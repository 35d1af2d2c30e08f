"""The optimisation loop for one task (also the pretraining loop): AdamW + warmup-cosine."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from cmml.train.device import DeviceInfo


def fit(module: nn.Module, batches: Callable[[int], Iterator[Any]], loss_fn: Callable[[Any], tuple[Tensor, dict[str, float]]],
        *, epochs: int, steps_per_epoch: int, lr: float, weight_decay: float, warmup: float,
        device: DeviceInfo) -> dict[str, Any]:
    """Train ``module``'s parameters that require grad; ``batches(epoch)`` yields device batches.

    A new optimizer and schedule per call (per task), as in rebq.md §1.3. Returns a log with
    the mean loss terms of the first and last epoch, steps and samples/s.
    """
    from transformers import get_cosine_schedule_with_warmup

    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise RuntimeError("nothing to train: no parameter requires grad")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    total = max(1, epochs * steps_per_epoch)
    sched = get_cosine_schedule_with_warmup(opt, math.ceil(warmup * total), total)
    module.train()
    history: list[dict[str, float]] = []
    samples, t0 = 0, time.perf_counter()
    for epoch in range(epochs):
        sums: dict[str, float] = {}
        n = 0
        for batch in batches(epoch):
            with device.autocast():
                loss, logs = loss_fn(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            n += 1
            samples += len(batch)
            for k, v in {"loss": float(loss.detach()), **logs}.items():
                sums[k] = sums.get(k, 0.0) + v
        history.append({k: v / max(n, 1) for k, v in sums.items()})
    wall = time.perf_counter() - t0
    module.eval()
    return {"epochs": epochs, "steps": epochs * steps_per_epoch, "samples": samples, "wall_s": round(wall, 3),
            "samples_per_s": round(samples / wall, 1) if wall > 0 else None,
            "first_epoch": history[0] if history else {}, "last_epoch": history[-1] if history else {}}
