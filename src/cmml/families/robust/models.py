"""The robust family's classifiers and checkpoints: plain, adapted (per combination) and dedicated models.

Every classifier reads text [CLS] of the backbone's last layer through a linear head and has
``logits(batch)``; the adapted and dedicated ones pick, per sample, the parameters of its known
combination of available modalities (``batch.present``), the oracle the paper assumes. A
checkpoint holds only what its stage trained plus the record of how it was made; the backbone
is referenced by the sha256 of its weights, an adapter checkpoint by its start model's.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cmml.errors import DataError
from cmml.models.adapters import (AdapterSet, backbone_size, build_adapters, combination_index, combination_key,
                                  combinations, encode_routed, route)
from cmml.models.backbone import Backbone, load_backbone

FORMAT = "cmml-robust-checkpoint/1"


def ckpt_file(kind: str, fill: str | None) -> str:
    """Checkpoint file name in a model's directory: one per fill, one in all for complete-data models."""
    return "checkpoint.pt" if kind == "complete" else f"checkpoint_{fill}.pt"


@dataclass(frozen=True)
class Setup:
    """What every model of one stage shares: the backbone directory and digest, label space, modalities."""

    backbone_dir: Path
    backbone_sha256: str
    num_classes: int
    multilabel: bool
    modalities: tuple[str, ...]

    @property
    def combos(self) -> list[tuple[str, ...]]:
        return combinations(self.modalities)

    @property
    def keys(self) -> list[str]:
        return [combination_key(c) for c in self.combos]

    def combo_index(self, present: Tensor) -> Tensor:
        return combination_index(present, self.modalities, self.combos)


class Plain(nn.Module):
    """Backbone + linear head on text [CLS]; the backbone is trained only when asked."""

    def __init__(self, backbone: Backbone, num_classes: int, train_backbone: bool):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.hidden_size, num_classes)
        self.train_backbone = train_backbone
        backbone.requires_grad_(train_backbone)

    def train(self, mode: bool = True) -> Plain:
        """A frozen backbone always stays in eval mode."""
        super().train(mode)
        if not self.train_backbone:
            self.backbone.eval()
        return self

    def logits(self, batch: Any) -> Tensor:
        return self.head(self.backbone(batch.input_ids, batch.attention_mask, batch.pixel_values).text_cls)

    def state(self) -> dict[str, Tensor]:
        """Head, plus the backbone's weights when they were trained."""
        own = {f"head.{k}": v for k, v in self.head.state_dict().items()}
        if self.train_backbone:
            own.update({f"backbone.{k}": v for k, v in self.backbone.state_dict().items()})
        return {k: v.detach().cpu().clone() for k, v in own.items()}

    def load(self, state: dict[str, Tensor], source: str) -> None:
        want = set(self.state())
        if set(state) != want:
            raise DataError(f"{source}: model state does not fit: missing {sorted(want - set(state))[:4]}, "
                            f"unexpected {sorted(set(state) - want)[:4]}")
        self.head.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")})
        if self.train_backbone:
            self.backbone.load_state_dict({k[9:]: v for k, v in state.items() if k.startswith("backbone.")})

    def trainable(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


class Adapted(nn.Module):
    """A frozen complete-data model with one adapter set per combination, chosen per sample."""

    def __init__(self, base: Plain, adapters: AdapterSet, setup: Setup):
        super().__init__()
        self.base, self.adapters, self.setup = base, adapters, setup
        base.requires_grad_(False)
        base.train_backbone = False

    def train(self, mode: bool = True) -> Adapted:
        super().train(mode)
        self.base.eval()
        return self

    def logits(self, batch: Any) -> Tensor:
        index = self.setup.combo_index(batch.present)
        hidden = encode_routed(self.adapters, index, batch.input_ids, batch.attention_mask, batch.pixel_values)
        return self.base.head(hidden[:, 0])


class Dedicated(nn.Module):
    """One plain model per combination; each sample is classified by its combination's model."""

    def __init__(self, models: dict[str, Plain], setup: Setup):
        super().__init__()
        self.models, self.setup = nn.ModuleDict(models), setup

    def logits(self, batch: Any) -> Tensor:
        keys = self.setup.keys
        return route(self.setup.combo_index(batch.present), lambda k, rows: self.models[keys[k]].logits(batch.rows(rows)))


def stream_seed(seed: int, *parts: str) -> int:
    """A 63-bit seed for (seed, parts): independent streams per model and combination."""
    digest = hashlib.sha256("/".join((str(seed), *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def presence_of(combo: tuple[str, ...], modalities: tuple[str, ...], n: int) -> torch.Tensor:
    """bool [n, M]: exactly ``combo`` present in every row."""
    return torch.tensor([m in combo for m in modalities], dtype=torch.bool).expand(n, -1).clone()


def dropped_presence(setup: Setup, n: int, p: float, gen: torch.Generator) -> torch.Tensor:
    """bool [n, M]: complete, or with probability ``p`` a uniformly drawn incomplete combination."""
    combos = setup.combos
    present = presence_of(combos[0], setup.modalities, n)
    drop = torch.rand(n, generator=gen) < p
    which = torch.randint(1, len(combos), (n,), generator=gen)
    for k in range(1, len(combos)):
        rows = drop & (which == k)
        present[rows] = presence_of(combos[k], setup.modalities, 1)
    return present


def first_per_class(data: Any, n: int | None) -> Any:
    """The first ``n`` samples of each class (by primary label, in split order) of ``data``; all if None."""
    if n is None:
        return data
    keep = torch.zeros(len(data), dtype=torch.bool)
    for c in data.primary.unique().tolist():
        keep[(data.primary == c).nonzero().flatten()[:n]] = True
    return data.subset(keep)


def task_loss(logits: Tensor, labels: Tensor, multilabel: bool) -> Tensor:
    """The unchanged task loss: cross-entropy, or mean binary cross-entropy for multi-hot labels."""
    logits = logits.float()
    if multilabel:
        return F.binary_cross_entropy_with_logits(logits, labels.float())
    return F.cross_entropy(logits, labels)


def plain(setup: Setup, train_backbone: bool) -> Plain:
    """A plain model on a fresh copy of the backbone (the caller seeds the head)."""
    return Plain(load_backbone(setup.backbone_dir), setup.num_classes, train_backbone)


def adapted(setup: Setup, base: Plain, kind: str, hp: dict[str, Any]) -> Adapted:
    """An adapted model: ``kind`` adapter sets for every combination on ``base``."""
    return Adapted(base, build_adapters(kind, base.backbone, setup.keys, hp), setup)


def save(path: Path, record: dict[str, Any], state: dict[str, Any]) -> None:
    """Write a checkpoint (``path`` is a temp file of the stage)."""
    torch.save({"format": FORMAT, **record, "state": state}, path)


def load(path: Path, expect: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint whose record matches ``expect``; DataError naming the file and field otherwise."""
    if not path.is_file():
        raise DataError(f"{path}: checkpoint not found (run its train stage first)")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise DataError(f"{path}: corrupt checkpoint, cannot be read ({type(exc).__name__})") from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise DataError(f"{path}: not a robust-family checkpoint (expected format {FORMAT!r})")
    for key, want in expect.items():
        if ck.get(key) != want:
            raise DataError(f"{path}: checkpoint field '{key}' is {ck.get(key)!r}, expected {want!r}")
    return ck


def build_trained(setup: Setup, name: str, hp: dict[str, Any], ckpts: dict[str, str], seed: int,
                  models: dict[str, dict[str, Any]], fill: str) -> nn.Module:
    """Model ``name`` as trained under ``fill``, from its directory ``ckpts[name]`` (and its start model's)."""
    kind = hp["kind"]
    expect = {"model": name, "kind": kind, "seed": seed, "backbone_sha256": setup.backbone_sha256,
              "fill": None if kind == "complete" else fill}
    path = Path(ckpts[name]) / ckpt_file(kind, fill)
    ck = load(path, expect)
    if kind in ("complete", "dropout"):
        m = plain(setup, hp["train_backbone"])
        m.load(ck["state"], str(path))
        return m
    if kind == "dedicated":
        parts = {}
        for key in setup.keys:
            parts[key] = plain(setup, hp["train_backbone"])
            parts[key].load(ck["state"].get(key, {}), f"{path} [{key}]")
        return Dedicated(parts, setup)
    base = build_trained(setup, hp["start"], models[hp["start"]], ckpts, seed, models, fill)
    m = adapted(setup, base, kind, hp)
    m.adapters.load_adapter_state(ck["state"], str(path))
    return m


def parameter_counts(setup: Setup, model: nn.Module) -> dict[str, Any]:
    """Trainable values per combination and the backbone's size (the denominator of the paper's %)."""
    if isinstance(model, Adapted):
        per = {k: model.adapters.count(k) for k in setup.keys}
        size = backbone_size(model.base.backbone)
    elif isinstance(model, Dedicated):
        per = {k: model.models[k].trainable() for k in setup.keys}
        size = backbone_size(model.models[setup.keys[0]].backbone)
    else:
        per = {k: model.trainable() for k in setup.keys}  # one model serves every combination
        size = backbone_size(model.backbone)
    return {"per_combination": per, "backbone": size,
            "percent_of_backbone": {k: round(100.0 * n / size, 4) for k, n in per.items()}}
