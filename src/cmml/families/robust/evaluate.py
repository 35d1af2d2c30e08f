"""Stage handler ``robust/evaluate/seed<k>``: every model of a seed under every fill and test condition.

Conditions, all on the test split of every class (its first ``test_per_class`` samples each), missing inputs filled by the fill policy at hand:

* ``combinations``: every sample with exactly one combination of available modalities;
* ``settings``: the listed settings' test missing tables (MAP codes per sample), a mixed batch;
* ``rates``: the missing-rate sweep -- a share r of the samples loses modalities, each of those
  drawn uniformly among the incomplete combinations (the same draw for every model and fill).

Adapted and dedicated models pick each sample's parameters by its known combination; a model is
evaluated with the checkpoint trained under the same fill. Writes ``scores.json``: ``{"metric",
"seed", "combinations", "fills": {fill: {"counts": {group: {condition: samples}}, "models": {name:
{"kind", "start", "params", "combinations": {key: score}, "settings": {...}, "rates": {"<r>": score}}}}}}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cmml.eval.metrics import score
from cmml.families.robust.models import (Setup, build_trained, dropped_presence, first_per_class, parameter_counts,
                                         presence_of, stream_seed)
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


def conditions(a: dict[str, Any], params: dict[str, Any], fill: str, tok: Any, loading: Any,
               seed: int) -> tuple[Setup, dict[str, dict[str, Any]]]:
    """The test conditions under ``fill``: ``{group: {condition: split}}`` (see the module docstring)."""
    from cmml.data.dataset import load_split

    data, tasks = Path(a["data"]), Path(a["tasks"])
    cap = params[SECTION]["test_per_class"]
    test = first_per_class(load_split(data, tasks, "test", tok, fill=fill, loading=loading), cap)
    bdir = Path(a["backbone"])
    setup = Setup(bdir, backbone_digest(bdir), test.num_classes, test.multilabel, test.modalities)
    return setup, {
        "combinations": {key: test.with_present(presence_of(c, setup.modalities, len(test)))
                         for c, key in zip(setup.combos, setup.keys)},
        "settings": {s: first_per_class(load_split(data, tasks, "test", tok, missing_dir=Path(d), fill=fill,
                                                   loading=loading), cap) for s, d in a["missing"].items()},
        "rates": {rate_label(r): test.with_present(dropped_presence(
            setup, len(test), float(r), torch.Generator().manual_seed(stream_seed(seed, "rate", rate_label(r)))))
            for r in params[SECTION]["missing_rates"]},
    }


def run(stage: Any, params: dict[str, Any]) -> None:
    """Score every model of the seed under every fill and condition and write ``scores.json``."""
    from cmml.data.dataset import Loading
    from cmml.data.tokenizer import load_tokenizer

    a = stage.args
    seed = int(a["seed"])
    device = select_device(params["runtime"])
    bs = params["runtime"]["eval_batch_size"]
    tok = load_tokenizer(Path(a["backbone"]), params["benchmark"]["max_text_len"])
    loading = Loading.from_runtime(params["runtime"], device.device)
    models = all_models(params, stage.params_file)
    fills: dict[str, Any] = {}
    for fill in a["fills"]:
        setup, conds = conditions(a, params, fill, tok, loading, seed)
        out: dict[str, Any] = {}
        for name, hp in models.items():
            model = build_trained(setup, name, hp, a["ckpts"], seed, models, fill).to(device.device).eval()
            seen: dict[bytes, float] = {}  # same presence, same samples: same score (rate 0 is the complete split)
            scores: dict[str, dict[str, float]] = {}
            for group, splits in conds.items():
                for k, d in splits.items():
                    key = d.present.numpy().tobytes() + d.sample_ids[0].encode() + str(len(d)).encode()
                    if key not in seen:
                        seen[key] = evaluate(model, d, bs, device)
                    scores.setdefault(group, {})[k] = seen[key]
            out[name] = {"kind": hp["kind"], "start": hp.get("start"), "params": parameter_counts(setup, model), **scores}
        fills[fill] = {"counts": {g: {k: len(d) for k, d in splits.items()} for g, splits in conds.items()},
                       "models": out}
    result = {"metric": "f1_macro" if setup.multilabel else "accuracy", "seed": seed, "combinations": setup.keys,
              "fills": fills}
    with stage_run(stage, params, seed=seed, device=device.describe()) as sr:
        write_json(sr.tmp(a["out"]) / SCORES, result)
