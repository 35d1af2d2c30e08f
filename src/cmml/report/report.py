"""The report stage: the aggregate outputs -> index.md, index.html (same content), PNG plots.

Reads only the aggregate stage's outputs (metrics.json for the per-setting tables, summary.csv for
the benchmark name, the matrices for the heatmaps) and params' report/settings/experiments. The
document is built once as a list of blocks and rendered to Markdown and to self-contained HTML.
"""

from __future__ import annotations

import csv
import html
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from cmml.config import Run, runs
from cmml.errors import DataError
from cmml.eval.metrics import METRIC_KEYS
from cmml.pipeline.plan import REPORT_DIR
from cmml.provenance.sidecar import stage_run
from cmml.report.aggregate import MATRICES, METRICS_JSON, SUMMARY_CSV, matrix_name, read_object

FIGSIZE = (4.0, 3.0)
DPI = 80
AP_PLOT = "ap.png"
HEATMAPS = "heatmaps"
MAIN_COLUMNS = (("AP", "AP"), ("forgetting", "Forgetting"), ("last", "Last"))
TRANSFER_COLUMNS = (("bwt", "BWT"), ("fwt", "FWT"), ("forgetting_max", "Forgetting (max)"))
HOW_TO_READ = [
    "Scores are in % on each task's test split: top-1 accuracy, or multilabel F1 macro in which a label "
    "with no positive and no prediction counts as 0 (torchmetrics 1.x, as in RebQ).",
    "`R[i][j]` is the score on task j after training task i (the heatmaps; entries right of the diagonal "
    "are scores before task j was trained); `b[j]` is the untrained model's score (row init).",
    "AP: mean of the last row, `mean_j R[T-1][j]`, every task weighted equally (RebQ calls it "
    "'average precision'; it is an average of scores, not precision).",
    "Forgetting: RebQ's diagonal variant, `mean_{j<T-1} (R[j][j] - R[T-1][j])`.",
    "Forgetting (max): the CL-toolkit variant with the best earlier score, "
    "`mean_{j<T-1} (max_{j<=i<T-1} R[i][j] - R[T-1][j])`.",
    "Last: `R[T-1][T-1]`, the last task's score after the last task (one number, not an average).",
    "BWT (GEM): `mean_{j<T-1} (R[T-1][j] - R[j][j])`, i.e. minus Forgetting. "
    "FWT (GEM): `mean_{j>=1} (R[j-1][j] - b[j])`.",
    "Joint training learns all tasks at once and is evaluated only after the last task, so its "
    "history-based metrics are n/a.",
    "Cells show the mean ± sample std over seeds; with one seed only the mean is shown.",
]

Block = tuple[Any, ...]  # (kind, *content); kinds: h1 h2 h3 p ul links table img


def _read_csv(path: Path) -> list[list[str]]:
    if not path.is_file():
        raise DataError(f"{path}: missing; run the aggregate stage first")
    try:
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: not a readable CSV file: {exc}") from None
    if len(rows) < 2 or any(len(r) != len(rows[0]) for r in rows):
        raise DataError(f"{path}: expected a header and at least one row, all of the same width")
    return rows


def load_group(doc: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    """The checked metrics.json entry of one ``<setting>/<method>``."""
    entry = doc.get(key)
    ok = isinstance(entry, dict) and isinstance(entry.get("metric"), str) and isinstance(entry.get("n_seeds"), int)
    ok = ok and all(isinstance(entry.get(k), dict) and all(
        entry[k].get(s) is None or isinstance(entry[k].get(s), (int, float)) for s in ("mean", "std")) for k in METRIC_KEYS)
    if not ok:
        raise DataError(f"{path}: no well-formed entry for '{key}' (metric, n_seeds, mean/std of {list(METRIC_KEYS)}); "
                        "rerun the aggregate stage")
    return entry


def load_matrix(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """Row labels, column labels and values (NaN for empty cells) of a matrix CSV."""
    rows = _read_csv(path)
    try:
        values = np.array([[float(v) if v else math.nan for v in r[1:]] for r in rows[1:]], dtype=np.float64)
    except ValueError as exc:
        raise DataError(f"{path}: non-numeric cell: {exc}") from None
    return [r[0] for r in rows[1:]], rows[0][1:], values


def mean_std(stat: dict[str, float | None]) -> str:
    """``mean ± std`` with 2 decimals; the mean alone without a std; n/a without a mean."""
    if stat["mean"] is None:
        return "n/a"
    return f"{stat['mean']:.2f}" if stat["std"] is None else f"{stat['mean']:.2f} ± {stat['std']:.2f}"


def describe(split: dict[str, Any], both_ratio: float) -> str:
    """One split's missing-modality setting in words (MAP semantics, data.md §1)."""
    r, kind = float(split["ratio"]), split["type"]
    if r == 0:
        return "complete"
    if kind == "both":
        return f"{r:.0%} missing ({r * (1 - both_ratio):.0%} text, {r * both_ratio:.0%} image)"
    return f"{kind} missing in {r:.0%}"


def document(params: dict[str, Any], bench: str, groups: dict[str, dict[str, Any]]) -> list[Block]:
    """The report's content, independent of the output format."""
    order: dict[str, dict[str, list[Run]]] = {}
    for r in runs(params):
        order.setdefault(r.setting, {}).setdefault(r.method, []).append(r)
    blocks: list[Block] = [
        ("h1", params["report"]["title"]),
        ("p", f"Benchmark `{bench}`."),
        ("links", [("per-seed metrics (CSV)", "../summary.csv"), ("metrics over seeds (JSON)", "../metrics.json"),
                   ("score matrices (CSV)", "../matrices/")]),
        ("h2", "How to read"),
        ("ul", HOW_TO_READ),
        ("h2", "AP per method and setting"),
        ("img", "AP per method and setting (mean, error bar: std over seeds)", AP_PLOT),
    ]
    for setting, methods in order.items():
        spec = params["settings"][setting]
        blocks += [
            ("h2", f"Setting `{setting}`"),
            ("p", f"Missing modalities. Train: {describe(spec['train'], spec['both_ratio'])}; "
                  f"test: {describe(spec['test'], spec['both_ratio'])}."),
            ("h3", "Performance and forgetting"),
            ("table", ["Method", "Metric", *(label for _, label in MAIN_COLUMNS), "Seeds"],
             [[m, groups[f"{setting}/{m}"]["metric"], *(mean_std(groups[f"{setting}/{m}"][k]) for k, _ in MAIN_COLUMNS),
               str(groups[f"{setting}/{m}"]["n_seeds"])] for m in methods]),
            ("h3", "Transfer"),
            ("table", ["Method", *(label for _, label in TRANSFER_COLUMNS)],
             [[m, *(mean_std(groups[f"{setting}/{m}"][k]) for k, _ in TRANSFER_COLUMNS)] for m in methods]),
            ("h3", "Score matrices (heatmaps)"),
            ("links", [(f"{r.method}, seed {r.seed}", f"{HEATMAPS}/{matrix_name(r)}.png") for rs in methods.values() for r in rs]),
        ]
    return blocks


def to_markdown(blocks: list[Block]) -> str:
    """Render blocks as Markdown."""
    out: list[str] = []
    for kind, *c in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append(f"{'#' * int(kind[1])} {c[0]}")
        elif kind == "p":
            out.append(c[0])
        elif kind == "ul":
            out.append("\n".join(f"- {item}" for item in c[0]))
        elif kind == "links":
            out.append("\n".join(f"- [{label}]({href})" for label, href in c[0]))
        elif kind == "table":
            header, rows = c
            lines = [header, ["---"] * len(header), *rows]
            out.append("\n".join("| " + " | ".join(cells) + " |" for cells in lines))
        elif kind == "img":
            out.append(f"![{c[0]}]({c[1]})")
    return "\n\n".join(out) + "\n"


def _inline(text: str) -> str:
    """Escaped text with `code` spans as <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def to_html(blocks: list[Block]) -> str:
    """Render blocks as one self-contained HTML page (no external assets)."""
    body: list[str] = []
    for kind, *c in blocks:
        if kind in ("h1", "h2", "h3", "p"):
            body.append(f"<{kind}>{_inline(c[0])}</{kind}>")
        elif kind == "ul":
            body.append("<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in c[0]) + "</ul>")
        elif kind == "links":
            body.append("<ul>" + "".join(f'<li><a href="{html.escape(href)}">{_inline(label)}</a></li>' for label, href in c[0]) + "</ul>")
        elif kind == "table":
            header, rows = c
            head = "".join(f"<th>{_inline(h)}</th>" for h in header)
            cells = "".join("<tr>" + "".join(f"<td>{_inline(v)}</td>" for v in r) + "</tr>" for r in rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>")
        elif kind == "img":
            body.append(f'<p><img src="{html.escape(c[1])}" alt="{html.escape(c[0])}"></p>')
    title = html.escape(next(c[0] for kind, *c in blocks if kind == "h1"))
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse}th,td{border:1px solid #bbb;padding:.2em .6em;text-align:right}"
             "th:first-child,td:first-child{text-align:left}code{background:#f2f2f2}")
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{style}</style></head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n")


def plot_heatmap(path: Path, title: str, rows: list[str], cols: list[str], values: np.ndarray) -> None:
    """A small annotated heatmap of one run's score matrix (0-100 colour scale, blank where not evaluated)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, fontsize=6)
    ax.set_yticks(range(len(rows)), rows, fontsize=6)
    for (i, j), v in np.ndenumerate(values):
        if not math.isnan(v):
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=6, color="white" if v < 50 else "black")
    ax.set_title(title, fontsize=8)
    fig.colorbar(im, ax=ax).ax.tick_params(labelsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)


def plot_ap(path: Path, settings: list[str], methods: list[str], groups: dict[str, dict[str, Any]]) -> None:
    """Grouped bars: AP (mean, std error bar) of each method in each setting."""
    from matplotlib.figure import Figure

    width = 0.8 / len(methods)
    fig = Figure(figsize=(max(FIGSIZE[0], 1.5 + 0.3 * len(settings) * len(methods)), FIGSIZE[1]), dpi=DPI)
    ax = fig.add_subplot()
    for k, m in enumerate(methods):
        stats = [groups.get(f"{s}/{m}", {}).get("AP", {"mean": None, "std": None}) for s in settings]
        means = [math.nan if st["mean"] is None else st["mean"] for st in stats]
        stds = [0.0 if st["std"] is None else st["std"] for st in stats]
        ax.bar(np.arange(len(settings)) + (k - (len(methods) - 1) / 2) * width, means, width, yerr=stds, label=m, capsize=2)
    ax.set_xticks(range(len(settings)), settings, fontsize=7)
    ax.set_ylabel("AP (%)", fontsize=7)
    ax.tick_params(axis="y", labelsize=6)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)


def run(stage: Any, params: dict[str, Any]) -> None:
    """Stage handler: read the aggregate outputs, write the report folder."""
    metrics_doc = read_object(Path(METRICS_JSON), "aggregate")
    all_runs = runs(params)
    groups = {key: load_group(metrics_doc, key, Path(METRICS_JSON)) for key in dict.fromkeys(f"{r.setting}/{r.method}" for r in all_runs)}
    summary = _read_csv(Path(SUMMARY_CSV))
    if summary[0][0] != "benchmark" or len({row[0] for row in summary[1:]}) != 1:
        raise DataError(f"{SUMMARY_CSV}: expected a 'benchmark' first column with one benchmark name; rerun the aggregate stage")
    bench = summary[1][0]
    matrices = {r: load_matrix(Path(MATRICES) / f"{matrix_name(r)}.csv") for r in all_runs}
    blocks = document(params, bench, groups)

    sr = stage_run(stage, params)
    with sr:
        out = sr.tmp(REPORT_DIR)
        (out / HEATMAPS).mkdir()
        for r, (rows, cols, values) in matrices.items():
            plot_heatmap(out / HEATMAPS / f"{matrix_name(r)}.png", f"{r.setting} / {r.method} / seed {r.seed}", rows, cols, values)
        plot_ap(out / AP_PLOT, list(dict.fromkeys(r.setting for r in all_runs)), list(dict.fromkeys(r.method for r in all_runs)), groups)
        (out / "index.md").write_text(to_markdown(blocks))
        (out / "index.html").write_text(to_html(blocks))
