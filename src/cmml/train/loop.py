"""The optimisation loop for one task (also the pretraining loop): any optimizer + warmup-cosine."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from cmml.train.device import DeviceInfo
from cmml.train.distributed import Dist
from cmml.train.resume import ResumeFile


@dataclass
class Resumable:
    """What the loop saves after every epoch and restores on a rerun (see :mod:`cmml.train.resume`)."""

    file: ResumeFile
    get_state: Callable[[], dict[str, Tensor]]  # the model's trainable state
    set_state: Callable[[dict[str, Tensor]], None]
    generators: tuple[torch.Generator, ...]  # every generator the epochs draw from (data order, masks, ...)


def fit(module: nn.Module, batches: Callable[[int], Iterator[Any]], loss_fn: Callable[[Any], tuple[Tensor, dict[str, float]]],
        *, epochs: int, steps_per_epoch: int, optimizer: torch.optim.Optimizer, warmup: float, device: DeviceInfo,
        after_step: Callable[[torch.optim.Optimizer], None] | None = None, label: str = "train",
        resume: Resumable | None = None, dist: Dist | None = None) -> dict[str, Any]:
    """Train with ``optimizer`` (new per call, i.e. per task) and a warmup-cosine schedule stepped per batch.

    ``batches(epoch)`` yields device batches; ``after_step(optimizer)`` runs after every step.
    With ``resume``, the state after each epoch is saved and a saved state is restored first, so
    a killed run continues after its last finished epoch. One line per epoch goes to stderr
    (loss, samples/s, ETA). Returns a log with the mean loss terms of the first and last epoch,
    steps, samples/s and the epoch it resumed from.

    With ``dist`` (one rank of a multi-process stage, see :mod:`cmml.train.distributed`) the rank
    trains on its share of every batch ``batches`` yields, the gradients are summed over ranks
    before each step and the logged means are those of the whole batches; only rank 0 saves the
    resume state and prints.
    """
    from transformers import get_cosine_schedule_with_warmup

    total = max(1, epochs * steps_per_epoch)
    sched = get_cosine_schedule_with_warmup(optimizer, math.ceil(warmup * total), total)
    history: list[dict[str, float]] = []
    samples, t0, start = 0, time.perf_counter(), 0
    main = dist is None or dist.is_main
    saved = resume.file.load() if resume else None
    if saved is not None and resume is not None and saved.get("epochs") == epochs:
        resume.set_state(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        for g, state in zip(resume.generators, saved["generators"], strict=True):
            g.set_state(state)
        torch.set_rng_state(saved["torch_rng"])
        history, samples, start = saved["history"], saved["samples"], saved["epoch"] + 1
        if main:
            print(f"{label}: resuming after epoch {start}/{epochs}", file=sys.stderr, flush=True)
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    module.train()
    for epoch in range(start, epochs):
        sums: dict[str, float] = {}
        n = 0
        for batch in batches(epoch):
            part, share = (batch, 1.0) if dist is None else dist.shard(batch)
            optimizer.zero_grad(set_to_none=True)
            terms: dict[str, float] = {}
            if len(part):  # a rank's share of a short last batch may be empty
                with device.autocast():
                    loss, logs = loss_fn(part)
                (loss if dist is None else loss * share).backward()
                terms = {"loss": float(loss.detach()), **logs}
            if dist is not None:
                dist.reduce_grads(trainable)
            optimizer.step()
            if after_step is not None:
                after_step(optimizer)
            sched.step()
            n += 1
            samples += len(batch)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + share * v
        if dist is not None:
            sums = dist.sum_logs(sums)
        history.append({k: v / max(n, 1) for k, v in sums.items()})
        if resume is not None and main and epoch + 1 < epochs:
            resume.file.save({"epochs": epochs, "epoch": epoch, "model": resume.get_state(),
                              "optimizer": optimizer.state_dict(), "scheduler": sched.state_dict(),
                              "generators": [g.get_state() for g in resume.generators], "torch_rng": torch.get_rng_state(),
                              "history": history, "samples": samples})
        elapsed = time.perf_counter() - t0
        eta = elapsed / (epoch + 1 - start) * (epochs - epoch - 1)
        if main:
            print(f"{label}: epoch {epoch + 1}/{epochs} loss {history[-1].get('loss', float('nan')):.4f} "
                  f"{samples / max(elapsed, 1e-9):.0f} samples/s ETA {eta:.0f}s", file=sys.stderr, flush=True)
    wall = time.perf_counter() - t0
    module.eval()
    return {"epochs": epochs, "steps": epochs * steps_per_epoch, "samples": samples, "wall_s": round(wall, 3),
            "samples_per_s": round(samples / wall, 1) if wall > 0 else None, "resumed_after_epoch": start or None,
            "first_epoch": history[0] if history else {}, "last_epoch": history[-1] if history else {}}
