"""Stage handler ``cmml/aggregate``: every run's evaluated rows -> score matrix -> metrics, over seeds.

Reads each run's ``scores.json`` (the evaluate stage's contract), builds the T×T matrix of the
primary metric plus the untrained row, and writes ``results/cmml/metrics.json`` (mean and sample
std over seeds per setting/method; std is null for one seed), ``results/cmml/summary.csv`` (one row
per run) and ``results/cmml/matrices/<setting>__<method>__seed<k>.csv``. Every input is read and
checked before any output is opened, so a bad input leaves nothing behind.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cmml.errors import DataError
from cmml.eval.metrics import METRIC_KEYS, summarize
from cmml.families.cmml.runs import INIT_ROW, Run, row_label
from cmml.provenance.sidecar import stage_run

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
    params: dict[str, int]


def matrix_name(r: Run) -> str:
    """File stem of a run's matrix (also used for its heatmap)."""
    return f"{r.setting}__{r.method}__seed{r.seed}"


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


def load_scores(path: Path, rows: list[int], num_tasks: int) -> dict[str, Any]:
    """A checked run ``scores.json`` holding ``rows``; DataError naming the file when it is missing or malformed."""
    doc = read_object(path, "evaluate")

    def bad(what: str) -> DataError:
        return DataError(f"{path}: {what}")

    for key in ("metric", "scenario", "counts", "rows", "params"):
        if key not in doc:
            raise bad(f"missing key '{key}'")
    if doc["metric"] not in PRIMARY:
        raise bad(f"'metric' must be one of {list(PRIMARY)}, got {doc['metric']!r}")
    if doc["scenario"] not in ("class", "task"):
        raise bad(f"'scenario' must be 'class' or 'task', got {doc['scenario']!r}")
    counts = doc["counts"]
    if not isinstance(counts, list) or len(counts) != num_tasks or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
        raise bad(f"'counts' must be a list of {num_tasks} non-negative integers (one per task), got {counts!r}")
    p = doc["params"]
    if not isinstance(p, dict) or sorted(p) != ["backbone", "trained"] or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in p.values()):
        raise bad(f"'params' must be {{\"trained\": n, \"backbone\": n}} with positive integers, got {p!r}")
    if not isinstance(doc["rows"], dict):
        raise bad("'rows' must be an object {row label: {metric: [per task]}}")
    want = [row_label(r) for r in rows]
    if sorted(doc["rows"]) != sorted(want):
        raise bad(f"'rows' holds {sorted(doc['rows'])}, expected {want}")
    for label, scores in doc["rows"].items():
        if not isinstance(scores, dict) or doc["metric"] not in scores:
            raise bad(f"'rows.{label}' must be an object holding the primary metric '{doc['metric']}'")
        for name, vals in scores.items():
            if not isinstance(vals, list) or len(vals) != num_tasks or not all(_number(v) for v in vals):
                raise bad(f"'rows.{label}.{name}' must be a list of {num_tasks} numbers (one per task), got {vals!r}")
    return doc


def collect(runs: list[dict[str, Any]], num_tasks: int) -> list[RunResult]:
    """Every planned run's rows (``{method, setting, seed, rows, eval}``) and its matrix metrics."""
    T = num_tasks
    results = []
    for spec in runs:
        r = Run(spec["method"], spec["setting"], int(spec["seed"]))
        doc = load_scores(Path(spec["eval"]) / SCORES, spec["rows"], T)
        metric = doc["metric"]
        rows = {t: [math.nan if v is None else float(v) for v in doc["rows"][row_label(t)][metric]] for t in spec["rows"]}
        R = np.full((T, T), np.nan)
        for t, vals in rows.items():
            if t != INIT_ROW:
                R[t] = vals
        results.append(RunResult(r, metric, rows, summarize(R, rows.get(INIT_ROW)), doc["params"]))
    return results


def _fmt(x: float | None, digits: int) -> str:
    return "" if x is None or math.isnan(x) else f"{x:.{digits}f}"


def over_seeds(results: list[RunResult]) -> dict[str, dict[str, Any]]:
    """``{"<setting>/<method>": {metric: {mean, std}, n_seeds, metric, params}}`` (sample std; null for one
    seed; ``params``: trained and backbone parameter counts, the same for every seed)."""
    groups: dict[str, list[RunResult]] = {}
    for res in results:
        groups.setdefault(f"{res.run.setting}/{res.run.method}", []).append(res)
    out: dict[str, dict[str, Any]] = {}
    for key, members in groups.items():
        names = {m.metric for m in members}
        if len(names) > 1:
            raise DataError(f"{key}: seeds were scored with different metrics {sorted(names)}")
        entry: dict[str, Any] = {"metric": members[0].metric, "n_seeds": len(members),
                                 "params": members[0].params}
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
    """Stage handler: read every evaluated run, write metrics.json, summary.csv and the matrices."""
    a = stage.args
    results = collect(a["runs"], int(a["num_tasks"]))
    groups = over_seeds(results)
    sr = stage_run(stage, params, extra={"runs": len(results)})
    with sr:
        sr.tmp(a["metrics"]).write_text(json.dumps(groups, indent=2, sort_keys=True, allow_nan=False) + "\n")
        write_summary(sr.tmp(a["summary"]), a["bench"], results)
        for res in results:
            write_matrix(sr.tmp(a["matrices"]) / f"{matrix_name(res.run)}.csv", res)
