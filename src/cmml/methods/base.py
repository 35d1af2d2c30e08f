"""The common method interface: what the train and evaluate stages call.

A method owns the (frozen) backbone, a classifier head and whatever it trains (prompts,
adapters, ...). Per task the train stage calls, in order:

1. ``begin_task(ctx)`` with a :class:`TaskContext` (the task, its training data, the device, and
   -- for methods with ``NEEDS_PREVIOUS`` -- a frozen copy of the model as task t-1 left it);
2. ``configure_optimizer()`` (default AdamW over every parameter that requires grad, with the
   run's ``lr``, ``weight_decay`` and ``betas``);
3. per step: ``replay(batch, ctx)`` (default: the batch itself; replay methods append stored
   samples), ``loss(batch, task)``, backward, optimizer step, ``after_optimizer_step(opt)``;
4. ``end_task(ctx)`` (e.g. a Fisher diagonal or an exemplar update over ``ctx.data``).

``predict`` serves evaluation; ``trainable_state``/``load_trainable_state`` serve checkpoints,
which hold what the method trains plus every buffer it registers (Fisher diagonals, exemplar
tensors, of any shape), never the frozen backbone (referenced by hash).
"""

from __future__ import annotations

import copy
import importlib
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


@dataclass
class TaskContext:
    """What a method sees at the start and end of a task."""

    task: int
    data: Any  # the task's training split (cmml.data.dataset.SplitData); None for the untrained row
    device: torch.device
    previous: Method | None = None  # frozen copy of the model as task t-1 left it (NEEDS_PREVIOUS)
    generator: torch.Generator | None = None  # the run's sampling generator (replay draws)


BCE_MEANS = ("seen", "trained")


class Method(nn.Module):
    """Base class: frozen backbone + linear head on text [CLS]; subclasses add what they train."""

    NAME: ClassVar[str] = ""
    NEEDS_PREVIOUS: ClassVar[bool] = False
    COMMON_HPARAMS: ClassVar[dict[str, type | tuple[type, ...]]] = {
        "epochs": int, "batch_size": int, "lr": float, "weight_decay": float, "warmup": float,
        "betas": list, "mask_old_logits": bool, "bce_mean": str,
    }
    HPARAMS: ClassVar[dict[str, type | tuple[type, ...]]] = {}

    @classmethod
    def resolve_hparams(cls, block: dict[str, Any], where: str) -> dict[str, Any]:
        """A run's merged params block checked against the schema (exact key set, types, ranges).

        ``where`` names the block in messages (e.g. ``params.yaml: cmml.methods.rebq``).
        """
        schema = {**cls.COMMON_HPARAMS, **cls.HPARAMS}
        hp = {k: v for k, v in block.items() if k != "method"}
        for key in sorted(set(schema) - set(hp)):
            raise ConfigError(f"{where}.{key} is missing ({cls.NAME} needs {sorted(schema)})")
        for key in sorted(set(hp) - set(schema)):
            raise ConfigError(f"{where}.{key} is not a {cls.NAME} hyper-parameter (expected {sorted(schema)})")
        for key, typ in schema.items():
            val = hp[key]
            types = typ if isinstance(typ, tuple) else (typ,)
            if isinstance(val, bool) and bool not in types or not isinstance(val, types):
                if float in types and isinstance(val, int) and not isinstance(val, bool):
                    hp[key] = float(val)
                    continue
                names = "/".join(t.__name__ for t in types)
                raise ConfigError(f"{where}.{key} must be {names}, got {val!r}")
        cls.check_hparams(hp, where)
        return hp

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
        betas = hp["betas"]
        if len(betas) != 2 or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas):
            raise ConfigError(f"{where}.betas must be two numbers in [0, 1) (AdamW's beta1, beta2), got {betas!r}")
        if hp["bce_mean"] not in BCE_MEANS:
            raise ConfigError(f"{where}.bce_mean must be one of {list(BCE_MEANS)}, got {hp['bce_mean']!r}")

    def train(self, mode: bool = True) -> Method:
        """Train mode for the method's own modules; the frozen backbone always stays in eval mode."""
        super().train(mode)
        if not any(p.requires_grad for p in self.backbone.parameters()):
            self.backbone.eval()
        return self

    # ---- continual hooks -------------------------------------------------------------
    def begin_task(self, ctx: TaskContext) -> None:
        """Called before training task ``ctx.task`` (after loading task t-1's state)."""
        self.task = ctx.task

    def end_task(self, ctx: TaskContext) -> None:
        """Called after training task ``ctx.task``, before the checkpoint is written."""

    def configure_optimizer(self) -> torch.optim.Optimizer:
        """A new optimizer for the task: AdamW over every parameter that requires grad."""
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise RuntimeError(f"{self.NAME}: nothing to train (no parameter requires grad)")
        return torch.optim.AdamW(params, lr=self.hp["lr"], weight_decay=self.hp["weight_decay"],
                                 betas=(float(self.hp["betas"][0]), float(self.hp["betas"][1])))

    def after_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Called after every optimizer step (e.g. to decay parameters outside the optimizer)."""

    def replay(self, batch: Any, ctx: TaskContext) -> Any:
        """The batch to train on: ``batch`` itself, or it plus stored samples (replay methods)."""
        return batch

    def frozen_copy(self) -> Method:
        """A deep copy in eval mode with no parameter requiring grad (the backbone is shared, not copied)."""
        backbone = self.backbone
        self.backbone = None  # type: ignore[assignment]
        try:
            twin = copy.deepcopy(self)
        finally:
            self.backbone = backbone
        twin.backbone = backbone
        twin.requires_grad_(False)
        for p in self.backbone.parameters():
            if p.requires_grad:  # a trained backbone must be copied too
                twin.backbone = copy.deepcopy(backbone).requires_grad_(False)
                break
        return twin.eval()

    # ---- forward ---------------------------------------------------------------------
    def features(self, batch: Any) -> Tensor:
        """[B, D] features the head classifies (default: plain backbone, text [CLS])."""
        return self.backbone(batch.input_ids, batch.attention_mask, batch.pixel_values,
                             pixel_mask=batch.pixel_mask).text_cls

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
        tasks' columns are excluded from the loss, as RebQ's FREEZE_LOGITS does (docs/rebq.md
        §3.3 step 7): for CE they are filled with -100 (no gradient). For BCE the released code
        also fills them with -100 and averages over every seen column, so the masked columns add
        a constant (~100 per positive, docs/rebq.md §6.10) and dilute the gradient by
        seen/trained columns (§6.17). ``bce_mean: seen`` reproduces that gradient exactly (the sum
        over the trained columns divided by B x seen columns, without the constant);
        ``bce_mean: trained`` averages over the trained columns only, a (t+1)x larger gradient
        at task t when tasks are equal-sized. Task-incremental: only the task's own columns.
        """
        lo, hi = self.info.columns(task, task)
        start = self.info.offsets[task] if self.hp["mask_old_logits"] else lo
        logits = logits.float()
        if self.info.multilabel:
            bce = F.binary_cross_entropy_with_logits(logits[:, start:hi], labels[:, start:hi].float(), reduction="sum")
            cols = (hi - lo) if self.hp["bce_mean"] == "seen" else (hi - start)
            return bce / (logits.shape[0] * cols)
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
        """Load a checkpoint's state; DataError naming ``source`` if keys or parameter shapes disagree.

        Buffers may change shape between tasks (an exemplar memory grows), so a buffer takes the
        checkpoint's tensor as it is.
        """
        params, buffers = dict(self.named_parameters()), dict(self.named_buffers())
        own = params | buffers
        expected = set(self.trainable_state())
        missing, extra = sorted(expected - set(state)), sorted(set(state) - set(own))
        if missing or extra:
            raise DataError(f"{source}: checkpoint does not fit method {self.NAME!r}: missing {missing[:5]}, unexpected {extra[:5]}")
        with torch.no_grad():
            for k, v in state.items():
                if k in buffers and own[k].shape != v.shape:
                    owner, _, name = k.rpartition(".")
                    module = self.get_submodule(owner) if owner else self
                    module.register_buffer(name, v.to(own[k].device, own[k].dtype).clone())
                    continue
                if own[k].shape != v.shape:
                    raise DataError(f"{source}: tensor {k!r} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}")
                own[k].copy_(v)


def load_method(module: str) -> type[Method]:
    """The ``METHOD`` class of a method module (the plan names the module; no registry lookup)."""
    cls = importlib.import_module(module).METHOD
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise ConfigError(f"{module}.METHOD must be a cmml.methods.base.Method subclass")
    return cls
