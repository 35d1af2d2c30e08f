"""Stage handler ``robust/evaluate/<fill>/seed<k>``: every model of one seed on every test condition.

Conditions, all on the test split of every class, missing inputs filled by the stage's fill policy:

* ``combinations``: every sample with exactly one combination of available modalities;
* ``settings``: the listed settings' test missing tables (MAP codes per sample), a mixed batch;
* ``rates``: the missing-rate sweep -- a share r of the samples loses modalities, each of those
  drawn uniformly among the incomplete combinations (the same draw for every model and fill).

Adapted and dedicated models pick each sample's parameters by its known combination. Writes
``scores.json``: ``{"metric", "counts": {condition: samples}, "models": {name: {"kind", "start",
"combinations": {key: score}, "settings": {...}, "rates": {"<r>": score}, "params": {...}}}}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cmml.eval.metrics import score
from cmml.families.robust.models import Setup, build_trained, dropped_presence, parameter_counts, presence_of, stream_seed
from cmml.families.robust.plan import SECTION, all_models
from cmml.models.backbone import backbone_digest
from cmml.pipeline.atomic import write_json
from cmml.provenance.sidecar import stage_run
from cmml.train.device import DeviceInfo, select_device

SCORES = "scores.json"


def rate_label(r: float) -> str:
    """Key of a missing rate in the scores (``0.5``)."""
    return f"{float(r):g}"


def evaluate(model: Any, data: Any, bs: int, device: DeviceInfo) -> float:
    """The primary metric (accuracy or F1-macro, in %) of ``model`` on ``data``."""
    logits, labels = [], []
    with torch.no_grad():
        for b in data.batches(bs, shuffle=False):
            with device.autocast():
                logits.append(model.logits(b.to(device.device)).float().cpu())
            labels.append(b.labels)
    s = score(torch.cat(logits), torch.cat(labels), data.multilabel)
    return round(s.get("accuracy", s.get("f1_macro", float("nan"))), 4)


def run(stage: Any, params: dict[str, Any]) -> None:
    """Score every model of the seed under every condition and write ``scores.json``."""
    from cmml.data.dataset import Loading, load_split
    from cmml.data.tokenizer import load_tokenizer

    a = stage.args
    fill, seed = a["fill"], int(a["seed"])
    device = select_device(params["runtime"])
    bs = params["runtime"]["eval_batch_size"]
    bdir = Path(a["backbone"])
    tok = load_tokenizer(bdir, params["benchmark"]["max_text_len"])
    loading = Loading.from_runtime(params["runtime"], device.device)
    test = load_split(Path(a["data"]), Path(a["tasks"]), "test", tok, fill=fill, loading=loading)
    setup = Setup(bdir, backbone_digest(bdir), test.num_classes, test.multilabel, test.modalities)
    conditions: dict[str, dict[str, Any]] = {
        "combinations": {key: test.with_present(presence_of(c, setup.modalities, len(test)))
                         for c, key in zip(setup.combos, setup.keys)},
        "settings": {s: load_split(Path(a["data"]), Path(a["tasks"]), "test", tok, missing_dir=Path(d), fill=fill,
                                   loading=loading) for s, d in a["missing"].items()},
        "rates": {rate_label(r): test.with_present(dropped_presence(
            setup, len(test), float(r), torch.Generator().manual_seed(stream_seed(seed, "rate", rate_label(r)))))
            for r in params[SECTION]["missing_rates"]},
    }
    models = all_models(params, stage.params_file)
    out: dict[str, Any] = {}
    for name, hp in models.items():
        model = build_trained(setup, name, hp, a["ckpts"], seed, models).to(device.device).eval()
        out[name] = {"kind": hp["kind"], "start": hp.get("start"), "params": parameter_counts(setup, model),
                     **{group: {k: evaluate(model, d, bs, device) for k, d in conds.items()}
                        for group, conds in conditions.items()}}
    result = {"metric": "f1_macro" if setup.multilabel else "accuracy", "fill": fill, "seed": seed,
              "combinations": setup.keys,
              "counts": {g: {k: len(d) for k, d in conds.items()} for g, conds in conditions.items()}, "models": out}
    with stage_run(stage, params, seed=seed, device=device.describe()) as sr:
        write_json(sr.tmp(a["out"]) / SCORES, result)
