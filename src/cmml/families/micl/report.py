"""Stage handler ``micl/report``: the family's page — both orders, methods × metrics, per-task matrices.

Built from the aggregate outputs only, as blocks rendered by :mod:`cmml.report.render`.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from cmml.errors import DataError
from cmml.provenance.sidecar import stage_run
from cmml.report.render import Block, to_html, to_markdown

HOW_TO_READ = [
    "Captioning tasks (`*_cap`): CIDEr ×100 (pycocoevalcap, one reference: the first paraphrase). "
    "QA tasks (`*_qa`): VQA accuracy ×100 with symmetric normalisation; image QA scores min(1, matches/3) over "
    "ten noisy answers, video and audio QA exact match.",
    "`R[i][j]`: score on task j after training step i, tasks in the order's sequence; only seen tasks are evaluated.",
    "AP: mean of the last row over all tasks. Forgetting: mean over tasks before the last of the best earlier "
    "score minus the final score. Last: the last task's score after the last step.",
    "Cells: mean ± sample std over seeds. Joint training is evaluated after the last step only (forgetting n/a).",
]


def _cell(stat: dict[str, Any]) -> str:
    if stat["mean"] is None:
        return "n/a"
    return f"{stat['mean']:.1f}" if stat["std"] is None else f"{stat['mean']:.1f} ± {stat['std']:.1f}"


def document(metrics: dict[str, Any], runs: list[dict[str, Any]], matrices: Path) -> list[Block]:
    """The report's blocks."""
    blocks: list[Block] = [("h1", "Modality-inconsistent continual learning (MoInCL)"),
                           ("p", "Data: [metrics over seeds (JSON)](../metrics.json), [per-run metrics (CSV)](../summary.csv), "
                                 "[task matrices (CSV)](../matrices/)."), ("toc",), ("h2", "How to read"), ("ul", HOW_TO_READ)]
    orders = list(dict.fromkeys(r["order"] for r in runs))
    for order in orders:
        methods = list(dict.fromkeys(r["method"] for r in runs if r["order"] == order))
        tasks = metrics[f"{order}/{methods[0]}"]["tasks"]
        blocks += [("h2", f"Order `{order}`"), ("p", "Tasks in sequence: " + " → ".join(f"`{t}`" for t in tasks) + "."),
                   ("table", ["Method", "AP", "Forgetting", "Last", *tasks, "Seeds"],
                    [[m, *(_cell(metrics[f"{order}/{m}"][k]) for k in ("AP", "forgetting", "last")),
                      *(_cell(metrics[f"{order}/{m}"][f"final_{t}"]) for t in tasks), str(metrics[f"{order}/{m}"]["n_seeds"])]
                     for m in methods])]
        for m in methods:
            seed = min(r["seed"] for r in runs if r["order"] == order and r["method"] == m)
            path = matrices / f"{order}__{m}__seed{seed}.csv"
            if not path.is_file():
                raise DataError(f"{path}: missing; rerun the micl aggregate stage")
            with open(path, newline="") as fh:
                rows = list(csv.reader(fh))
            blocks += [("h3", f"`{m}`, seed {seed}: task matrix"),
                       ("table", ["after \\ on", *rows[0][1:]], [[r[0], *(v or "–" for v in r[1:])] for r in rows[1:]])]
    return blocks


def run(stage: Any, params: dict[str, Any]) -> None:
    """Write ``index.md`` and ``index.html`` of the family's report."""
    a = stage.args
    path = Path(a["metrics"])
    if not path.is_file():
        raise DataError(f"{path}: missing; run the micl aggregate stage first")
    metrics = json.loads(path.read_text())
    blocks = document(metrics, a["runs"], Path(a["matrices"]))
    with stage_run(stage, params) as sr:
        out = sr.tmp(a["out"])
        (out / "index.md").write_text(to_markdown(blocks), encoding="utf-8")
        (out / "index.html").write_text(to_html(blocks), encoding="utf-8")
