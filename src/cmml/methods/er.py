"""ER, experience replay with a reservoir memory (Chaudhry et al., 2019), on sequential fine-tuning.

A memory of at most ``buffer_size`` samples, filled by reservoir sampling over the stream of every
training sample seen so far: after task t, :meth:`ER.end_task` offers the task's samples, in the
split's order, to the reservoir (sample number s of the stream, counted from 0 over all tasks,
takes a free slot while s < size, otherwise replaces slot j ~ U{0..s} if j < size), so each of the
n samples seen so far is held with probability min(1, size / n). The draws come from the run's
generator (``TaskContext.generator``), so a run is deterministic.

A sample is stored as the model saw it: its batch tensors after the fill policy (pixels, token
ids and attention mask of the missing input's fill), its labels, modality presence (hence its
missing code) and task. During task t every training batch gets ``replay_batch_size`` stored
samples (drawn without replacement, same generator) appended in :meth:`ER.replay`; the loss is the
mean over the concatenated batch, in the class-incremental scenario over the columns of every
class seen so far, in the task-incremental one each sample over its own task's columns. Stored
samples are only of earlier tasks (the memory is updated when a task ends, as Avalanche's replay
plugin does), the current task being fully available anyway. The memory is a set of registered
buffers whose first dimension grows up to ``buffer_size``, so checkpoints carry it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from cmml.data.tokenizer import PAD_ID
from cmml.errors import ConfigError
from cmml.methods.base import TaskContext, TaskInfo
from cmml.methods.finetune import FineTune
from cmml.models.backbone import Backbone

FIELDS = ("pixel_values", "input_ids", "attention_mask", "labels", "present", "tasks")  # stored per sample
TEXT_PAD = {"input_ids": PAD_ID, "attention_mask": 0}


def pad_text(t: Tensor, width: int, value: int) -> Tensor:
    """``t`` ([..., L]) right-padded with ``value`` to ``width`` columns."""
    return F.pad(t, (0, width - t.shape[-1]), value=value) if t.shape[-1] < width else t


def reservoir_slots(seen: int, n: int, size: int, generator: torch.Generator) -> dict[int, int]:
    """Reservoir sampling of ``n`` new stream samples after ``seen`` earlier ones: slot -> new sample index.

    Sample i (stream position s = seen + i) takes slot s while s < size, else slot j = floor(u (s + 1))
    with u ~ U[0, 1) if j < size; a later sample overwrites an earlier one's slot.
    """
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    slots: dict[int, int] = {}
    for i in range(n):
        s = seen + i
        j = s if s < size else int(u[i] * (s + 1))
        if j < size:
            slots[j] = i
    return slots


class ER(FineTune):
    """Fine-tuning (head, optionally the backbone) with a reservoir replay memory; see the module docstring."""

    NAME = "er"
    HPARAMS: ClassVar[dict[str, type | tuple[type, ...]]] = {
        **FineTune.HPARAMS, "buffer_size": int, "replay_batch_size": int,
    }

    @classmethod
    def check_hparams(cls, hp: dict[str, Any], where: str) -> None:
        """Positive sizes; no old-logit masking (replayed samples are of the old classes)."""
        super().check_hparams(hp, where)
        for key in ("buffer_size", "replay_batch_size"):
            if hp[key] <= 0:
                raise ConfigError(f"{where}.{key} must be positive, got {hp[key]}")
        if hp["mask_old_logits"]:
            raise ConfigError(f"{where}.mask_old_logits must be false for er (replayed samples belong to the "
                              "old classes, whose logits the masking would hold constant)")

    def __init__(self, backbone: Backbone, info: TaskInfo, hp: dict[str, Any]):
        super().__init__(backbone, info, hp)
        self.check_hparams(hp, "er")
        dtypes = {"pixel_values": torch.float32, "input_ids": torch.int64, "attention_mask": torch.int64,
                  "labels": torch.float32 if info.multilabel else torch.int64, "present": torch.bool,
                  "tasks": torch.int64}
        for name in FIELDS:
            self.register_buffer(f"memory_{name}", torch.zeros(0, dtype=dtypes[name]))
        self.register_buffer("memory_seen", torch.zeros((), dtype=torch.int64))

    def memory(self, name: str) -> Tensor:
        """The stored ``name`` field (see ``FIELDS``) of every sample in the memory."""
        return self.get_buffer(f"memory_{name}")

    def stored(self) -> int:
        """Number of samples in the memory."""
        return int(self.memory("tasks").shape[0])

    def end_task(self, ctx: TaskContext) -> None:
        """Offer the task's training samples to the reservoir, stored as their batches present them."""
        if ctx.generator is None:
            raise RuntimeError("er: end_task needs the run's generator (TaskContext.generator)")
        seen, n, size = int(self.memory_seen), len(ctx.data), self.hp["buffer_size"]
        slots = reservoir_slots(seen, n, size, ctx.generator)
        count = min(size, seen + n)
        order = sorted(slots)
        new = ctx.data.batch(torch.tensor([slots[s] for s in order], dtype=torch.int64)).to(ctx.device)
        if new.pixel_mask is not None:
            raise ConfigError("er stores fixed-size images; with benchmark.image_resize: vilt (per-image sizes) use "
                              "image_resize: square for er runs")
        at = torch.tensor(order, dtype=torch.int64, device=ctx.device)
        old_n = self.stored()
        width = max(new.input_ids.shape[1], self.memory("input_ids").shape[-1] if old_n else 0)
        stored = {}
        for name in FIELDS:
            fresh = getattr(new, name)
            if name in TEXT_PAD:
                fresh = pad_text(fresh, width, TEXT_PAD[name])
            out = fresh.new_zeros((count, *fresh.shape[1:]))
            if old_n:
                old = self.memory(name)
                out[:old_n] = pad_text(old, width, TEXT_PAD[name]) if name in TEXT_PAD else old
            out[at] = fresh
            stored[name] = out
        used = int(stored["attention_mask"].any(0).nonzero().max()) + 1  # trim columns no stored sample attends
        for name in FIELDS:
            value = stored[name][:, :used] if name in TEXT_PAD else stored[name]
            self.register_buffer(f"memory_{name}", value.contiguous())
        self.memory_seen.fill_(seen + n)

    def replay(self, batch: Any, ctx: TaskContext) -> Any:
        """``batch`` plus ``replay_batch_size`` stored samples (drawn with the run's generator)."""
        n = self.stored()
        if n == 0:
            return batch
        if ctx.generator is None:
            raise RuntimeError("er: replay needs the run's generator (TaskContext.generator)")
        idx = torch.randperm(n, generator=ctx.generator)[: self.hp["replay_batch_size"]].to(self.memory("tasks").device)
        width = max(batch.input_ids.shape[1], self.memory("input_ids").shape[1])
        parts: dict[str, Tensor] = {}
        for name in FIELDS:
            mine, stored = getattr(batch, name), self.memory(name)[idx]
            if name in TEXT_PAD:
                mine, stored = pad_text(mine, width, TEXT_PAD[name]), pad_text(stored, width, TEXT_PAD[name])
            parts[name] = torch.cat([mine, stored.to(mine.device, mine.dtype)])
        return replace(batch, **parts, empty_ids=pad_text(batch.empty_ids, width, PAD_ID),
                       empty_mask=pad_text(batch.empty_mask, width, 0))

    def loss(self, batch: Any, task: int) -> tuple[Tensor, dict[str, float]]:
        """Mean classification loss over the batch and its replayed samples (see the module docstring)."""
        if self.info.scenario == "class":
            return super().loss(batch, task)
        logits = self.logits(batch)
        cls = logits.new_zeros((), dtype=torch.float32)
        for u in batch.tasks.unique().tolist():
            rows = (batch.tasks == u).nonzero().squeeze(1)
            cls = cls + self.classification_loss(logits[rows], batch.labels[rows], u) * rows.numel()
        cls = cls / len(batch)
        return cls, {"cls": float(cls.detach())}


METHOD = ER
