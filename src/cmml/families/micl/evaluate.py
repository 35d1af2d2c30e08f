"""Evaluation of a micl run, inside its run stage (:mod:`cmml.families.micl.train`): after each step, every task seen so far.

Generation by beam search (``micl.generation``). Captioning: CIDEr ×100 against one reference (the
first paraphrase, the same at every evaluation) and against all three. QA: VQA accuracy ×100 with
symmetric normalisation, and with the released asymmetric one. Writes ``scores.json``
``{"tasks", "primary", "rows": {"task<i>": {metric: [per task, null where not evaluated]}}}`` and the
predictions of every row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cmml.families.micl.examples import prompt_example
from cmml.families.micl.metrics import cider, vqa_accuracy
from cmml.families.micl.model import MiclModel, build_model, load_checkpoint, load_samples
from cmml.pipeline.atomic import write_json
from cmml.provenance.sidecar import StageRun
from cmml.train.device import seed_everything

SCORES = "scores.json"
METRICS = ("primary", "cider_single", "cider_all", "vqa_acc", "vqa_acc_released")


def predict(model: MiclModel, samples: list[dict[str, Any]], gen: dict[str, Any], device: torch.device) -> list[str]:
    """Generated answers/captions of ``samples`` in batches of ``gen['batch_size']``."""
    out: list[str] = []
    bs = int(gen["batch_size"])
    for k in range(0, len(samples), bs):
        out += model.generate([prompt_example(s) for s in samples[k:k + bs]], device, gen)
    return out


def score_task(samples: list[dict[str, Any]], preds: list[str]) -> dict[str, float | None]:
    """Every metric of one task's predictions (×100; None where the metric does not apply)."""
    if samples[0]["kind"] == "cap":
        single = 100 * cider(preds, [s["captions"][:1] for s in samples])
        return {"primary": round(single, 4), "cider_single": round(single, 4),
                "cider_all": round(100 * cider(preds, [s["captions"] for s in samples]), 4), "vqa_acc": None,
                "vqa_acc_released": None}
    sym = 100 * sum(vqa_accuracy(p, s["answers"]) for p, s in zip(preds, samples)) / len(samples)
    rel = 100 * sum(vqa_accuracy(p, s["answers"], symmetric=False) for p, s in zip(preds, samples)) / len(samples)
    return {"primary": round(sym, 4), "cider_single": None, "cider_all": None, "vqa_acc": round(sym, 4),
            "vqa_acc_released": round(rel, 4)}


def evaluate(a: dict[str, Any], cfg: dict[str, Any], device: torch.device, ckpts: dict[int, Path],
             sr: StageRun) -> None:
    """Score each checkpoint ``ckpts[row]`` of the run on every task it has seen; write the scores into ``sr``.

    ``a`` holds the run stage's args (seed, tasks, data, pretrained backbone, eval directory ``eval``).
    """
    seed_everything(int(a["seed"]))
    tasks = list(a["tasks"])
    rows: dict[str, dict[str, list[float | None]]] = {}
    predictions: dict[str, dict[str, list[str]]] = {}
    test = None
    for row, ckpt in ckpts.items():
        model = build_model(Path(a["pretrained"]), cfg["lora"])
        load_checkpoint(ckpt, model)
        model.to(device).eval()
        if test is None:
            test = load_samples(Path(a["data"]), model, tasks, "test")
        per: dict[str, list[float | None]] = {m: [None] * len(tasks) for m in METRICS}
        for j, t in enumerate(tasks[: row + 1]):
            preds = predict(model, test[t], cfg["generation"], device)
            predictions.setdefault(f"task{row}", {})[t] = preds
            for m, v in score_task(test[t], preds).items():
                per[m][j] = v
        rows[f"task{row}"] = per
    result = {"tasks": tasks, "primary": ["cider_single" if t.endswith("_cap") else "vqa_acc" for t in tasks], "rows": rows}
    sr.extra["scores"] = result
    out = sr.tmp(a["eval"])
    write_json(out / SCORES, result)
    write_json(out / "predictions.json", predictions)
