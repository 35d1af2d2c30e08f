"""The aggregate stage: every run's evaluated rows -> score matrix -> metrics, over seeds.

Reads ``scores.json`` of each evaluation row (the evaluate stage's contract), builds the T×T matrix
of the primary metric plus the untrained row, and writes ``results/metrics.json`` (mean and sample
std over seeds per setting/method; std is null for one seed), ``results/summary.csv`` (one row per
run) and ``results/matrices/<setting>__<method>__seed<k>.csv``. Every input is read and checked
before any output is opened, so a bad input leaves nothing behind.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cmml.config import Run, benchmark_id, runs
from cmml.errors import DataError
from cmml.eval.metrics import METRIC_KEYS, summarize
from cmml.pipeline.plan import AGG_OUTS, INIT_TASK, Paths, eval_tasks
from cmml.provenance.sidecar import stage_run

METRICS_JSON, SUMMARY_CSV, MATRICES = AGG_OUTS
SCORES = "scores.json"
PRIMARY = ("accuracy", "f1_macro")
SUMMARY_COLUMNS = ["benchmark", "setting", "method", "seed", "metric", *METRIC_KEYS]


@dataclass(frozen=True)
class RunResult:
    """One run's primary-metric rows (row index -> T scores) and its matrix metrics."""

    run: Run
    metric: str
    rows: dict[int, list[float]]
    metrics: dict[str, float]


def matrix_name(r: Run) -> str:
    """File stem of a run's matrix (also used for its heatmap)."""
    return f"{r.setting}__{r.method}__seed{r.seed}"


def row_label(t: int) -> str:
    """Matrix row label: ``init`` for the untrained model, else ``task<t>``."""
    return "init" if t == INIT_TASK else f"task{t}"


def rounded(x: float) -> float | None:
    """``x`` rounded to 4 decimals for stable text; None for NaN; never -0.0."""
    return None if math.isnan(x) else round(x, 4) + 0.0


def _number(v: Any) -> bool:
    """A score entry: a finite number, or None/NaN for a task that was not scored."""
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isinf(v))


def read_object(path: Path, producer: str) -> dict[str, Any]:
    """A JSON object from ``path``; DataError naming the file (and the stage that makes it) otherwise."""
    if not path.is_file():
        raise DataError(f"{path}: missing; run the {producer} stage first")
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(doc).__name__}")
    return doc


def load_scores(path: Path, row: int, num_tasks: int) -> dict[str, Any]:
    """A checked ``scores.json`` of row ``row``; DataError naming the file when it is missing or malformed."""
    doc = read_object(path, "evaluate")

    def bad(what: str) -> DataError:
        return DataError(f"{path}: {what}")

    for key in ("row", "metric", "scores", "counts", "scenario"):
        if key not in doc:
            raise bad(f"missing key '{key}'")
    if doc["row"] != row or isinstance(doc["row"], bool):
        raise bad(f"'row' is {doc['row']!r}, expected {row}")
    if doc["metric"] not in PRIMARY:
        raise bad(f"'metric' must be one of {list(PRIMARY)}, got {doc['metric']!r}")
    if doc["scenario"] not in ("class", "task"):
        raise bad(f"'scenario' must be 'class' or 'task', got {doc['scenario']!r}")
    counts, scores = doc["counts"], doc["scores"]
    if not isinstance(counts, list) or len(counts) != num_tasks or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
        raise bad(f"'counts' must be a list of {num_tasks} non-negative integers (one per task), got {counts!r}")
    if not isinstance(scores, dict) or doc["metric"] not in scores:
        raise bad(f"'scores' must be an object holding the primary metric '{doc['metric']}'")
    for name, vals in scores.items():
        if not isinstance(vals, list) or len(vals) != num_tasks or not all(_number(v) for v in vals):
            raise bad(f"'scores.{name}' must be a list of {num_tasks} numbers (one per task), got {vals!r}")
    return doc


def collect(params: dict[str, Any]) -> list[RunResult]:
    """Every run's rows and metrics, checked for one metric and scenario per run."""
    P = Paths(params)
    T = params["tasks"]["num_tasks"]
    results = []
    for r in runs(params):
        docs = {}
        for t in eval_tasks(params, r):
            path = Path(P.eval(r, t)) / SCORES
            docs[t] = (path, load_scores(path, t, T))
        first_path, first = next(iter(docs.values()))
        for path, doc in docs.values():
            for key in ("metric", "scenario"):
                if doc[key] != first[key]:
                    raise DataError(f"{path}: '{key}' is {doc[key]!r} but {first_path} has {first[key]!r}")
        metric = first["metric"]
        rows = {t: [math.nan if v is None else float(v) for v in doc["scores"][metric]] for t, (_, doc) in docs.items()}
        R = np.full((T, T), np.nan)
        for t, vals in rows.items():
            if t != INIT_TASK:
                R[t] = vals
        results.append(RunResult(r, metric, rows, summarize(R, rows.get(INIT_TASK))))
    return results


def _fmt(x: float | None, digits: int) -> str:
    return "" if x is None or math.isnan(x) else f"{x:.{digits}f}"


def over_seeds(results: list[RunResult]) -> dict[str, dict[str, Any]]:
    """``{"<setting>/<method>": {metric: {mean, std}, n_seeds, metric}}`` (sample std; null for one seed)."""
    groups: dict[str, list[RunResult]] = {}
    for res in results:
        groups.setdefault(f"{res.run.setting}/{res.run.method}", []).append(res)
    out: dict[str, dict[str, Any]] = {}
    for key, members in groups.items():
        names = {m.metric for m in members}
        if len(names) > 1:
            raise DataError(f"{key}: seeds were scored with different metrics {sorted(names)}")
        entry: dict[str, Any] = {"metric": members[0].metric, "n_seeds": len(members)}
        for k in METRIC_KEYS:
            vals = np.array([m.metrics[k] for m in members])
            std = float(np.std(vals, ddof=1)) if len(vals) > 1 else math.nan
            entry[k] = {"mean": rounded(float(np.mean(vals))), "std": rounded(std)}
        out[key] = entry
    return out


def write_summary(path: Path, bench: str, results: list[RunResult]) -> None:
    """One CSV row per run (4 decimals, empty for NaN)."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(SUMMARY_COLUMNS)
        for res in results:
            r = res.run
            w.writerow([bench, r.setting, r.method, r.seed, res.metric, *(_fmt(rounded(res.metrics[k]), 4) for k in METRIC_KEYS)])


def write_matrix(path: Path, res: RunResult) -> None:
    """The evaluated rows of a run's primary metric (rows init/task<t>, columns task<j>, 2 decimals)."""
    T = len(next(iter(res.rows.values())))
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["row", *(f"task{j}" for j in range(T))])
        for t, vals in res.rows.items():
            w.writerow([row_label(t), *(_fmt(v, 2) for v in vals)])


def run(stage: Any, params: dict[str, Any]) -> None:
    """Stage handler: read every evaluated row, write metrics.json, summary.csv and the matrices."""
    results = collect(params)
    groups = over_seeds(results)
    sr = stage_run(stage, params, extra={"runs": len(results)})
    with sr:
        sr.tmp(METRICS_JSON).write_text(json.dumps(groups, indent=2, sort_keys=True, allow_nan=False) + "\n")
        write_summary(sr.tmp(SUMMARY_CSV), benchmark_id(params), results)
        for res in results:
            write_matrix(sr.tmp(MATRICES) / f"{matrix_name(res.run)}.csv", res)
