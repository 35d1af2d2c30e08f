"""The common method interface: what the train and evaluate stages call.

A method owns the (frozen) backbone, a classifier head and whatever it trains (prompts,
adapters, ...). The stages call ``begin_task`` → ``loss`` per batch → ``end_task`` for each
task, ``predict`` for evaluation, and ``trainable_state``/``load_trainable_state`` for
checkpoints (which hold only what the method trains; the backbone is referenced by hash).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cmml.errors import ConfigError, DataError
from cmml.models.backbone import Backbone


@dataclass(frozen=True)
class TaskInfo:
    """Label space of a continual sequence: task t owns classes [offsets[t], offsets[t+1])."""

    offsets: tuple[int, ...]
    multilabel: bool
    scenario: str  # "class" | "task"

    @property
    def num_tasks(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_classes(self) -> int:
        return self.offsets[-1]

    def columns(self, task: int, trained_upto: int) -> tuple[int, int]:
        """Logit columns scored for ``task`` by a model trained up to task ``trained_upto``.

        Class-incremental: every class seen by then (tasks not yet trained count as seen when
        they are the one being scored, so a row of the matrix is always defined).
        Task-incremental: only the task's own classes.
        """
        if self.scenario == "task":
            return self.offsets[task], self.offsets[task + 1]
        return 0, self.offsets[max(task, trained_upto) + 1]


class Method(nn.Module):
    """Base class: frozen backbone + linear head on text [CLS]; subclasses add what they train."""

    NAME: ClassVar[str] = ""
    COMMON_HPARAMS: ClassVar[dict[str, type | tuple[type, ...]]] = {
        "epochs": int, "batch_size": int, "lr": float, "weight_decay": float, "warmup": float,
        "mask_old_logits": bool,
    }
    HPARAMS: ClassVar[dict[str, type | tuple[type, ...]]] = {}

    def __init__(self, backbone: Backbone, info: TaskInfo, hp: dict[str, Any]):
        super().__init__()
        self.backbone = backbone
        self.info = info
        self.hp = hp
        self.task = 0
        backbone.requires_grad_(False)
        backbone.eval()
        self.head = nn.Linear(backbone.hidden_size, info.num_classes)

    @classmethod
    def check_hparams(cls, hp: dict[str, Any], where: str) -> None:
        """Range checks beyond types; subclasses extend."""
        for key in ("epochs", "batch_size"):
            if hp[key] <= 0:
                raise ConfigError(f"{where}.{key} must be positive, got {hp[key]}")
        for key in ("lr", "weight_decay"):
            if hp[key] < 0:
                raise ConfigError(f"{where}.{key} must be >= 0, got {hp[key]}")
        if not 0.0 <= hp["warmup"] < 1.0:
            raise ConfigError(f"{where}.warmup must be a fraction in [0, 1), got {hp['warmup']}")

    def train(self, mode: bool = True) -> Method:
        """Train mode for the method's own modules; the frozen backbone always stays in eval mode."""
        super().train(mode)
        if not any(p.requires_grad for p in self.backbone.parameters()):
            self.backbone.eval()
        return self

    # ---- continual hooks -------------------------------------------------------------
    def begin_task(self, task: int) -> None:
        """Called before training task ``task`` (after loading task-1's state)."""
        self.task = task

    def end_task(self, task: int) -> None:
        """Called after training task ``task``, before the checkpoint is written."""

    # ---- forward ---------------------------------------------------------------------
    def features(self, batch: Any) -> Tensor:
        """[B, D] features the head classifies (default: plain backbone, text [CLS])."""
        return self.backbone(batch.input_ids, batch.attention_mask, batch.pixel_values).text_cls

    def logits(self, batch: Any) -> Tensor:
        """[B, num_classes] logits over every class of the sequence."""
        return self.head(self.features(batch))

    def loss(self, batch: Any, task: int) -> tuple[Tensor, dict[str, float]]:
        """Training loss on one batch of task ``task`` and scalars to log."""
        cls = self.classification_loss(self.logits(batch), batch.labels, task)
        return cls, {"cls": float(cls.detach())}

    @torch.no_grad()
    def predict(self, batch: Any) -> Tensor:
        """Evaluation logits (no grad)."""
        return self.logits(batch)

    def classification_loss(self, logits: Tensor, labels: Tensor, task: int) -> Tensor:
        """CE (single-label) or BCE (multi-label) over the classes trainable at ``task``.

        Class-incremental: columns [0, end of task). With ``mask_old_logits`` the previous
        tasks' columns are excluded from the loss, as RebQ's FREEZE_LOGITS does (rebq.md §3.3
        step 7): for CE they are filled with -100 (no gradient); for BCE they are dropped
        instead of filled, which leaves the gradients identical and avoids the constant
        ~100-per-positive inflation of the released code (rebq.md §6.10).
        Task-incremental: only the task's own columns.
        """
        lo, hi = self.info.columns(task, task)
        start = self.info.offsets[task] if self.hp["mask_old_logits"] else lo
        logits = logits.float()
        if self.info.multilabel:
            return F.binary_cross_entropy_with_logits(logits[:, start:hi], labels[:, start:hi].float())
        z = logits[:, lo:hi]
        if start > lo:
            z = torch.cat([torch.full_like(z[:, : start - lo], -100.0), z[:, start - lo:]], dim=1)
        return F.cross_entropy(z, labels - lo)

    # ---- checkpoints -----------------------------------------------------------------
    def trainable_state(self) -> dict[str, Tensor]:
        """What a checkpoint stores: the method's own parameters and buffers (frozen ones included,
        e.g. earlier tasks' prompt rows), plus backbone weights only when they are trained."""
        state = {k: v.detach().cpu().clone() for k, v in self.named_parameters()
                 if not k.startswith("backbone.") or v.requires_grad}
        state.update({k: v.detach().cpu().clone() for k, v in self.named_buffers() if not k.startswith("backbone.")})
        return state

    def load_trainable_state(self, state: dict[str, Tensor], source: str) -> None:
        """Load a checkpoint's state; DataError naming ``source`` if keys or shapes disagree."""
        own = dict(self.named_parameters()) | dict(self.named_buffers())
        expected = set(self.trainable_state())
        missing, extra = sorted(expected - set(state)), sorted(set(state) - set(own))
        if missing or extra:
            raise DataError(f"{source}: checkpoint does not fit method {self.NAME!r}: missing {missing[:5]}, unexpected {extra[:5]}")
        with torch.no_grad():
            for k, v in state.items():
                if own[k].shape != v.shape:
                    raise DataError(f"{source}: tensor {k!r} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}")
                own[k].copy_(v)
