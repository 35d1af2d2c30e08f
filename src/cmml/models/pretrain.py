"""The pretrain stage (embedded benchmark): a tiny ViLT pretrained without the continual labels.

It stands in for a published pretrained LMM (docs/architecture.md, docs/data.md §4), which has never seen
the downstream labels. The ``pretrain`` split holds only classes of the shape groups the continual
classes leave unused (cmml.data.embedded), and the objectives are generic (:class:`Pretrainer`):

* image-text matching (ITM) on text [CLS]: every caption is shown with its own image (match) and
  with the image of another sample of the batch that shows other shape groups (:func:`itm_pairs`).
  The shape (noun) is the only thing caption and image share: colours are never named and the
  attribute words are invisible, so a same-shape image is a true match, not a negative;
* masked-token prediction (MLM) of the caption words, BERT-style (:func:`mask_tokens`), with the
  image in view;
* optionally, classification over the pretrain split's own classes (disjoint from the continual ones).

Afterwards the backbone is frozen by every method. The stage also measures, on the continual
classes, how much the benchmark needs both modalities: linear probes on the frozen text-[CLS]
features trained and tested with complete inputs, text only (image dummy) and image only (empty
text); they go to ``pretrain_log.json`` and the sidecar with each objective's first/last-epoch loss.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cmml.data.dataset import Batch, Loading, SplitData
from cmml.data.embedded import SPECIAL_TOKENS
from cmml.data.tokenizer import TextTokenizer
from cmml.pipeline.atomic import write_json
from cmml.provenance.sidecar import stage_run
from cmml.train.device import DeviceInfo, select_device, seed_everything
from cmml.train.loop import Resumable, fit
from cmml.train.resume import ResumeFile, stage_key

CONDITIONS = {"complete": 0, "text_only": 2, "image_only": 1}  # missing code applied to every sample
IGNORE = -100  # label of the positions MLM does not predict (cross_entropy's ignore_index)


# ---- objectives: pure functions + the loss module -------------------------------------------

def mask_tokens(input_ids: Tensor, attention_mask: Tensor, *, special_ids: Tensor, mask_id: int, vocab_size: int,
                prob: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """BERT-style masking: each real caption token (attended, not special) is chosen with probability
    ``prob``; a chosen token becomes [MASK] (80 %), a random non-special token (10 %) or stays (10 %).

    Returns the masked ids and the labels: the original id at chosen positions, -100 elsewhere.
    Random numbers come from ``generator`` (CPU), so the masks depend only on its seed.
    """
    shape, dev = input_ids.shape, input_ids.device
    u_pick, u_kind = (torch.rand(shape, generator=generator).to(dev) for _ in range(2))
    special_ids = special_ids.to(dev)
    chosen = attention_mask.bool() & ~torch.isin(input_ids, special_ids) & (u_pick < prob)
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE))
    regular = torch.ones(vocab_size, dtype=torch.bool)
    regular[special_ids.cpu()] = False
    pool = regular.nonzero().flatten()
    random_ids = pool[torch.randint(len(pool), shape, generator=generator)].to(dev)
    masked = torch.where(chosen & (u_kind < 0.8), torch.full_like(input_ids, mask_id), input_ids)
    masked = torch.where(chosen & (u_kind >= 0.8) & (u_kind < 0.9), random_ids, masked)
    return masked, labels


def itm_pairs(groups: Tensor, generator: torch.Generator) -> Tensor:
    """For each row, a random other row whose shape-group set differs (its image does not match the
    row's caption), or -1 where every row shows the same groups. ``groups``: bool [B, G]."""
    g = groups.cpu()
    differ = (g[:, None, :] != g[None, :, :]).any(-1)
    has = differ.any(1)
    weights = torch.where(has[:, None], differ.float(), torch.ones_like(differ, dtype=torch.float))
    pick = torch.multinomial(weights, 1, generator=generator).squeeze(1)
    return torch.where(has, pick, torch.full_like(pick, -1)).to(groups.device)


@dataclass
class PretrainBatch:
    """A batch of the pretrain split plus the shape groups each sample shows."""

    batch: Batch  # labels: the pretrain split's own classes (0..K-1), never a continual class
    groups: Tensor  # bool [B, G]

    def to(self, device: torch.device | str) -> PretrainBatch:
        """The batch on ``device``."""
        return PretrainBatch(self.batch.to(device), self.groups.to(device))

    def __len__(self) -> int:
        return len(self.batch)


class Pretrainer(nn.Module):
    """Backbone + ITM head (text [CLS]) + MLM head (text positions) + optional classification head.

    One backbone pass per batch over up to 3B rows: captions with their own images (ITM matches,
    classification), the same captions with mismatched images (ITM non-matches) and the masked
    captions with their own images (MLM). A weight of 0 drops its objective (and its rows).
    """

    def __init__(self, backbone: nn.Module, *, vocab_size: int, num_classes: int, multilabel: bool,
                 weights: dict[str, float], mask_prob: float, special_ids: Tensor, mask_id: int, seed: int):
        super().__init__()
        d = backbone.hidden_size
        self.backbone = backbone
        self.itm = nn.Linear(d, 2)
        self.mlm = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d), nn.Linear(d, vocab_size))
        self.cls = nn.Linear(d, num_classes) if weights["cls"] > 0 else None
        self.weights = weights
        self.multilabel = multilabel
        self.mask_prob = mask_prob
        self.vocab_size = vocab_size
        self.mask_id = mask_id
        self.register_buffer("special_ids", special_ids, persistent=False)
        self.generator = torch.Generator().manual_seed(seed)  # masks and negatives

    def loss(self, pb: PretrainBatch) -> tuple[Tensor, dict[str, float]]:
        """Weighted sum of the objectives on one batch, and each term (plus ITM/MLM accuracy) to log."""
        b, w = pb.batch, self.weights
        n = len(b)
        ids, am, px = [b.input_ids], [b.attention_mask], [b.pixel_values]
        neg = torch.empty(0, dtype=torch.long, device=px[0].device)
        if w["itm"] > 0:
            partner = itm_pairs(pb.groups, self.generator)
            neg = (partner >= 0).nonzero().flatten()
            ids.append(b.input_ids[neg])
            am.append(b.attention_mask[neg])
            px.append(b.pixel_values[partner[neg]])
        if w["mlm"] > 0:
            masked, mlm_labels = mask_tokens(b.input_ids, b.attention_mask, special_ids=self.special_ids,
                                             mask_id=self.mask_id, vocab_size=self.vocab_size, prob=self.mask_prob,
                                             generator=self.generator)
            ids.append(masked)
            am.append(b.attention_mask)
            px.append(b.pixel_values)
        enc = self.backbone(torch.cat(ids), torch.cat(am), torch.cat(px))
        cls_tok = enc.text_cls
        total = cls_tok.new_zeros((), dtype=torch.float32)
        logs: dict[str, float] = {}
        if w["itm"] > 0:
            m = n + len(neg)
            z = self.itm(cls_tok[:m]).float()
            target = (torch.arange(m, device=z.device) < n).long()
            itm = F.cross_entropy(z, target)
            total = total + w["itm"] * itm
            logs.update(itm=float(itm.detach()), itm_acc=float((z.argmax(1) == target).float().mean()))
        if w["mlm"] > 0:
            chosen = mlm_labels != IGNORE
            z = self.mlm(enc.hidden[-n:, : enc.text_len][chosen]).float()
            target = mlm_labels[chosen]
            mlm = F.cross_entropy(z, target) if len(target) else z.sum()
            total = total + w["mlm"] * mlm
            logs.update(mlm=float(mlm.detach()), mlm_acc=float((z.argmax(1) == target).float().mean()) if len(target) else 0.0)
        if self.cls is not None:
            z = self.cls(cls_tok[:n]).float()
            cls = (F.binary_cross_entropy_with_logits(z, b.labels.float()) if self.multilabel
                   else F.cross_entropy(z, b.labels))
            total = total + w["cls"] * cls
            logs["cls"] = float(cls.detach())
        return total, logs


# ---- data --------------------------------------------------------------------------------------

def load_pretrain_split(data_dir: Path, tokenizer: TextTokenizer, fill: str,
                        loading: Loading) -> tuple[SplitData, Tensor, list[int]]:
    """The pretrain split (complete, images read lazily) with labels over its own classes (0..K-1),
    the shape groups each sample shows (bool [N, G]) and the original class ids; DataError if any
    class is a continual one."""
    from cmml.data.dataset import Fill, ImageStore
    from cmml.data.modality import MAP_MODALITIES
    from cmml.data.tasks import read_manifest, read_table
    from cmml.errors import DataError

    manifest = read_manifest(data_dir)
    where = Path(data_dir) / manifest["splits"]["pretrain"]["file"]
    if "pretrain_classes" not in manifest:
        raise DataError(f"{Path(data_dir) / 'manifest.json'}: no 'pretrain_classes' (data from an older generator; "
                        "re-run the prepare stage)")
    group_of = {int(c["id"]): int(c["group"]) for c in manifest["pretrain_classes"]}
    classes = sorted(group_of)
    if classes and classes[0] < manifest["num_classes"]:
        raise DataError(f"{where}: the pretrain split holds continual classes ({classes[0]} < {manifest['num_classes']})")
    multilabel = manifest["label_type"] == "multi"
    table = read_table(data_dir, "pretrain", manifest, columns=["sample_id", "text", "primary", "labels"])
    label_sets = table.column("labels").to_pylist()
    if any(c not in group_of for labs in label_sets for c in labs):
        raise DataError(f"{where}: labels outside the manifest's pretrain_classes")
    index = {c: i for i, c in enumerate(classes)}
    primary = torch.tensor([index[int(p)] for p in table.column("primary").to_pylist()], dtype=torch.int64)
    groups = torch.zeros(len(label_sets), max(group_of.values()) + 1, dtype=torch.bool)
    labels = torch.zeros(len(label_sets), len(classes)) if multilabel else primary.clone()
    for row, labs in enumerate(label_sets):
        groups[row, [group_of[c] for c in labs]] = True
        if multilabel:
            labels[row, [index[c] for c in labs]] = 1.0
    ids, mask = tokenizer.encode(table.column("text").to_pylist())
    n, size = len(label_sets), int(manifest["image_size"])
    data = SplitData(sample_ids=table.column("sample_id").to_pylist(), rows=torch.arange(n),
                     images=ImageStore(where, size, loading.cache_mb * 2**20), input_ids=ids, attention_mask=mask,
                     labels=labels, primary=primary, tasks=torch.zeros(n, dtype=torch.int64),
                     present=torch.ones(n, len(MAP_MODALITIES), dtype=torch.bool), modalities=MAP_MODALITIES,
                     multilabel=multilabel, num_classes=len(classes), fill=Fill.make(fill, tokenizer, size),
                     loading=loading)
    return data, groups, classes


# ---- linear probes on the continual classes -----------------------------------------------------

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


# ---- stage -------------------------------------------------------------------------------------

VOLATILE = ("wall_s", "samples_per_s", "resumed_after_epoch")  # in the sidecar only: the backbone directory holds deterministic bytes


def run(stage: Any, params: dict[str, Any]) -> None:
    """Pretrain the tiny backbone of one seed and save it (HF save_pretrained + vocab) with its probe numbers."""
    from cmml.data.dataset import load_split
    from cmml.data.tokenizer import load_tokenizer
    from transformers.utils import logging as hf_logging

    from cmml.models.backbone import Backbone, new_vilt, tiny_config

    hf_logging.disable_progress_bar()
    pre = params["pretrain"]
    seed = int(stage.args["seed"])
    device = select_device(params["runtime"])
    seed_everything(seed)
    data_dir, tasks_dir = Path(stage.args["data"]), Path(stage.args["tasks"])
    vocab = data_dir / "vocab.txt"
    max_len = params["benchmark"]["max_text_len"]
    tok = load_tokenizer(vocab, max_len)
    opts = {"fill": params["data"]["fill"], "loading": Loading.from_runtime(params["runtime"], device.device)}
    data, groups, classes = load_pretrain_split(data_dir, tok, **opts)
    words = [line for line in vocab.read_text().splitlines() if line]
    cfg = tiny_config(len(words), max_len, params["benchmark"]["image_size"], params["backbone"]["tiny"])
    backbone = Backbone(new_vilt(cfg))
    special = torch.tensor([words.index(t) for t in SPECIAL_TOKENS], dtype=torch.long)  # never masked nor drawn
    model = Pretrainer(backbone, vocab_size=len(words), num_classes=len(classes), multilabel=data.multilabel,
                       weights={k: float(pre[f"{k}_weight"]) for k in ("itm", "mlm", "cls")},
                       mask_prob=pre["mask_prob"], special_ids=special, mask_id=words.index("[MASK]"),
                       seed=seed).to(device.device)
    gen = torch.Generator().manual_seed(seed)
    resume = ResumeFile(stage_key(stage, params))  # state after every epoch, outside the declared outputs

    def batches(epoch: int) -> Iterator[PretrainBatch]:
        order = torch.randperm(len(data), generator=gen)
        for start in range(0, len(data), pre["batch_size"]):
            idx = order[start:start + pre["batch_size"]]
            yield PretrainBatch(data.batch(idx), groups[idx]).to(device.device)

    log = fit(model, batches, model.loss, epochs=pre["epochs"], steps_per_epoch=math.ceil(len(data) / pre["batch_size"]),
              optimizer=torch.optim.AdamW(model.parameters(), lr=pre["lr"], weight_decay=pre["weight_decay"]),
              warmup=0.1, device=device, label=stage.name,
              resume=Resumable(resume, model.state_dict, model.load_state_dict, (gen, model.generator)))
    backbone.eval()
    log["pretrain_data"] = {"samples": len(data), "classes": classes}
    train = load_split(data_dir, tasks_dir, "train", tok, **opts)
    test = load_split(data_dir, tasks_dir, "test", tok, **opts)
    log["modality_probes"] = modality_probes(backbone, train, test, device)
    with stage_run(stage, params, seed=seed, device=device.describe(), extra={"pretrain": log}) as sr:
        out = sr.tmp(stage.outs[0])
        backbone.vilt.cpu().save_pretrained(out)
        shutil.copyfile(vocab, out / "vocab.txt")
        (out / "cmml_backbone.json").write_text(json.dumps({"source": "tiny", "max_text_len": max_len,
                                                             "image_size": params["benchmark"]["image_size"]}, indent=2) + "\n")
        write_json(out / "pretrain_log.json", {k: v for k, v in log.items() if k not in VOLATILE})
    resume.clear()
