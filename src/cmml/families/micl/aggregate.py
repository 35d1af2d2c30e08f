"""Stage handler ``micl/aggregate``: each run's task matrix -> average performance and forgetting, over seeds.

Reads every run's ``scores.json`` (written by each run stage, :mod:`.evaluate`) and writes
``results/micl/metrics.json`` (per ``<order>/<run>``: mean and sample std over seeds of AP,
forgetting, last and of each task's final score), ``summary.csv`` (one row per run) and one matrix
CSV per run (primary metric: CIDEr ×100 with one reference for captioning, VQA accuracy for QA).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from cmml.errors import DataError
from cmml.families.micl.metrics import matrix_metrics
from cmml.provenance.sidecar import stage_run

KEYS = ("AP", "forgetting", "last")


def load_matrix(path: Path) -> tuple[list[str], np.ndarray]:
    """Task names and the T×T primary-metric matrix (NaN where not evaluated) of a run's scores.json."""
    if not path.is_file():
        raise DataError(f"{path}: missing; run the micl run stage first")
    try:
        doc = json.loads(path.read_text())
        tasks, rows = doc["tasks"], doc["rows"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: expected a JSON object with 'tasks' and 'rows': {exc}") from None
    T = len(tasks)
    R = np.full((T, T), math.nan)
    for label, per in rows.items():
        i = int(label.removeprefix("task"))
        vals = per.get("primary") if isinstance(per, dict) else None
        if not isinstance(vals, list) or len(vals) != T or not 0 <= i < T:
            raise DataError(f"{path}: 'rows.{label}.primary' must be a list of {T} scores")
        R[i] = [math.nan if v is None else float(v) for v in vals]
    return tasks, R


def _r(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 4) + 0.0


def run(stage: Any, params: dict[str, Any]) -> None:
    """Matrices, per-run metrics and their mean/std over seeds."""
    a = stage.args
    results = []
    for e in a["runs"]:
        tasks, R = load_matrix(Path(e["eval"]) / "scores.json")
        results.append((e, tasks, R, matrix_metrics(R)))
    groups: dict[str, list[tuple[Any, ...]]] = {}
    for res in results:
        groups.setdefault(f"{res[0]['order']}/{res[0]['method']}", []).append(res)
    out: dict[str, Any] = {}
    for key, members in groups.items():
        entry: dict[str, Any] = {"n_seeds": len(members), "tasks": members[0][1]}
        stats = {k: [m[3][k] for m in members] for k in KEYS}
        stats.update({f"final_{t}": [m[2][-1, j] for m in members] for j, t in enumerate(members[0][1])})
        for k, vals in stats.items():
            arr = np.array(vals, dtype=float)
            entry[k] = {"mean": _r(float(np.mean(arr))), "std": _r(float(np.std(arr, ddof=1)) if len(arr) > 1 else math.nan)}
        out[key] = entry
    with stage_run(stage, params, extra={"runs": len(results)}) as sr:
        sr.tmp(a["metrics"]).write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")
        with open(sr.tmp(a["summary"]), "w", newline="") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(["order", "method", "seed", *KEYS])
            for e, _, _, m in results:
                w.writerow([e["order"], e["method"], e["seed"], *("" if math.isnan(m[k]) else f"{m[k]:.4f}" for k in KEYS)])
        for e, tasks, R, _ in results:
            with open(sr.tmp(a["matrices"]) / f"{e['order']}__{e['method']}__seed{e['seed']}.csv", "w", newline="") as fh:
                w = csv.writer(fh, lineterminator="\n")
                w.writerow(["after", *tasks])
                for i, t in enumerate(tasks):
                    w.writerow([t, *("" if math.isnan(v) else f"{v:.2f}" for v in R[i])])
