"""The pretrain stage (embedded benchmark): a tiny ViLT trained on complete image-text pairs.

It stands in for a published pretrained LMM (architecture.md): image-text matching (every
pair is also shown with a shifted image) plus classification on the disjoint ``pretrain``
split, complete data only. Afterwards the backbone is frozen by every method. The stage also
measures how much the benchmark needs both modalities: linear probes on the frozen text-[CLS]
features trained and tested with complete inputs, text only (image dummy) and image only
(empty text); the numbers go to ``pretrain_log.json`` and the sidecar.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cmml.pipeline.atomic import write_json
from cmml.pipeline.plan import Stage
from cmml.provenance.sidecar import stage_run
from cmml.train.device import DeviceInfo, select_device, seed_everything
from cmml.train.loop import fit

CONDITIONS = {"complete": 0, "text_only": 2, "image_only": 1}  # missing code applied to every sample


class Pretrainer(nn.Module):
    """Backbone + classification head + image-text-matching head."""

    def __init__(self, backbone: nn.Module, num_classes: int, multilabel: bool, itm_weight: float):
        super().__init__()
        self.backbone = backbone
        self.cls = nn.Linear(backbone.hidden_size, num_classes)
        self.itm = nn.Linear(backbone.hidden_size, 2)
        self.multilabel = multilabel
        self.itm_weight = itm_weight

    def loss(self, batch: Any) -> tuple[Tensor, dict[str, float]]:
        """Classification on the true pairs + ITM on true vs image-shifted pairs, in one pass."""
        b = len(batch)
        if self.itm_weight > 0:
            out = self.backbone(batch.input_ids.repeat(2, 1), batch.attention_mask.repeat(2, 1),
                                torch.cat([batch.pixel_values, batch.pixel_values.roll(1, dims=0)])).text_cls
            itm = F.cross_entropy(self.itm(out).float(), (torch.arange(2 * b, device=out.device) < b).long())
        else:
            out = self.backbone(batch.input_ids, batch.attention_mask, batch.pixel_values).text_cls
            itm = out.new_zeros(())
        logits = self.cls(out[:b]).float()
        cls = (F.binary_cross_entropy_with_logits(logits, batch.labels.float()) if self.multilabel
               else F.cross_entropy(logits, batch.labels))
        return cls + self.itm_weight * itm, {"cls": float(cls.detach()), "itm": float(itm.detach())}


@torch.no_grad()
def features(backbone: nn.Module, data: Any, device: DeviceInfo, batch_size: int = 256) -> Tensor:
    """Frozen text-[CLS] features of a split (codes as stored in ``data``)."""
    out = []
    for b in data.batches(batch_size, shuffle=False):
        b = b.to(device.device)
        with device.autocast():
            out.append(backbone(b.input_ids, b.attention_mask, b.pixel_values).text_cls.float().cpu())
    return torch.cat(out)


def linear_probe(x_tr: Tensor, y_tr: Tensor, x_te: Tensor, y_te: Tensor, multilabel: bool, steps: int = 300) -> float:
    """Train a linear classifier on frozen features (full batch, Adam) and score it on the test set."""
    from cmml.eval.metrics import score

    mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-6
    x_tr, x_te = (x_tr - mu) / sd, (x_te - mu) / sd
    n_out = y_tr.shape[1] if multilabel else int(max(y_tr.max(), y_te.max())) + 1
    probe = nn.Linear(x_tr.shape[1], n_out)
    opt = torch.optim.Adam(probe.parameters(), lr=0.01, weight_decay=1e-4)
    for _ in range(steps):
        z = probe(x_tr)
        loss = F.binary_cross_entropy_with_logits(z, y_tr.float()) if multilabel else F.cross_entropy(z, y_tr)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        res = score(probe(x_te), y_te, multilabel)
    return round(next(iter(res.values())), 2)


def modality_probes(backbone: nn.Module, train: Any, test: Any, device: DeviceInfo) -> dict[str, float]:
    """Probe accuracy (or F1-macro) with complete inputs, text only and image only, and chance."""
    res: dict[str, float] = {}
    for name, code in CONDITIONS.items():
        tr = train.with_codes(torch.full_like(train.codes, code))
        te = test.with_codes(torch.full_like(test.codes, code))
        res[name] = linear_probe(features(backbone, tr, device), tr.labels, features(backbone, te, device),
                                 te.labels, test.multilabel)
    res["chance"] = round(100.0 / test.num_classes, 2)
    return res


def run(stage: Stage, params: dict[str, Any]) -> None:
    """Pretrain the tiny backbone and save it (HF save_pretrained + vocab) with its probe numbers."""
    from cmml.data.dataset import load_split
    from cmml.data.tokenizer import load_tokenizer
    from transformers.utils import logging as hf_logging

    from cmml.models.backbone import Backbone, new_vilt, tiny_config

    hf_logging.disable_progress_bar()
    pre = params["pretrain"]
    device = select_device(params["runtime"])
    seed_everything(pre["seed"])
    data_dir, tasks_dir = Path(stage.deps[0]), Path(stage.deps[1])
    vocab = data_dir / "vocab.txt"
    max_len = params["benchmark"]["max_text_len"]
    tok = load_tokenizer(vocab, max_len)
    data = load_split(data_dir, tasks_dir, "pretrain", tok)
    n_vocab = sum(1 for line in vocab.read_text().splitlines() if line)
    cfg = tiny_config(n_vocab, max_len, params["benchmark"]["image_size"], params["backbone"]["tiny"])
    backbone = Backbone(new_vilt(cfg))
    model = Pretrainer(backbone, data.num_classes, data.multilabel, pre["itm_weight"]).to(device.device)
    gen = torch.Generator().manual_seed(pre["seed"])

    def batches(epoch: int):
        for b in data.batches(pre["batch_size"], shuffle=True, generator=gen):
            yield b.to(device.device)

    log = fit(model, batches, model.loss, epochs=pre["epochs"], steps_per_epoch=math.ceil(len(data) / pre["batch_size"]),
              lr=pre["lr"], weight_decay=pre["weight_decay"], warmup=0.1, device=device)
    backbone.eval()
    train = load_split(data_dir, tasks_dir, "train", tok)
    test = load_split(data_dir, tasks_dir, "test", tok)
    log["modality_probes"] = modality_probes(backbone, train, test, device)
    with stage_run(stage, params, seed=pre["seed"], device=device.describe(), extra={"pretrain": log}) as sr:
        out = sr.tmp(stage.outs[0])
        backbone.vilt.cpu().save_pretrained(out)
        shutil.copyfile(vocab, out / "vocab.txt")
        (out / "cmml_backbone.json").write_text(json.dumps({"source": "tiny", "max_text_len": max_len,
                                                             "image_size": params["benchmark"]["image_size"]}, indent=2) + "\n")
        write_json(out / "pretrain_log.json", log)
