"""The report stage, continual-learning family: the aggregate outputs -> index.md, index.html, PNG plots.

Reads only the aggregate stage's outputs (metrics.json for the per-setting tables, summary.csv for
the benchmark name, the matrices for the heatmaps and curves) and params' report/settings/experiments.
The content (tables, AP chart, curves, heatmaps) is built once as blocks; :mod:`cmml.report.render`
turns them into Markdown and self-contained HTML and sizes the figures to the page.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np

from cmml.errors import DataError
from cmml.eval.metrics import METRIC_KEYS
from cmml.families.cmml.aggregate import matrix_name, read_object
from cmml.families.cmml.runs import INIT_ROW, Run, row_label
from cmml.provenance.sidecar import stage_run
from cmml.report.render import CONTENT_WIDTH_PX, Block, figure, palette, to_html, to_markdown

AP_PLOT = "ap.png"
RATE_PLOT = "missing_rate.png"
MODALITY_TYPES = ("both", "text", "image")
HEATMAPS = "heatmaps"
CURVES = "curves"
MAIN_COLUMNS = (("AP", "AP"), ("forgetting", "Forgetting"), ("last", "Last"))
TRANSFER_COLUMNS = (("bwt", "BWT"), ("fwt", "FWT"), ("forgetting_max", "Forgetting (max)"))
HOW_TO_READ = [
    "Scores are in % on each task's test split: top-1 accuracy, or multilabel F1 macro in which a label "
    "with no positive and no prediction counts as 0 (torchmetrics 1.x, as in RebQ).",
    "`R[i][j]` is the score on task j after training task i (the heatmaps and the per-task curves; entries "
    "right of the diagonal are scores before task j was trained, dotted in the curves); `b[j]` is the "
    "untrained model's score (row init).",
    "AP: mean of the last row, `mean_j R[T-1][j]`, every task weighted equally (RebQ calls it "
    "'average precision'; it is an average of scores, not precision).",
    "Average score on the tasks seen so far after task i: `mean_{j<=i} R[i][j]`; after the last task it is AP.",
    "Forgetting: RebQ's diagonal variant, `mean_{j<T-1} (R[j][j] - R[T-1][j])`.",
    "Forgetting (max): the CL-toolkit variant with the best earlier score, "
    "`mean_{j<T-1} (max_{j<=i<T-1} R[i][j] - R[T-1][j])`.",
    "Last: `R[T-1][T-1]`, the last task's score after the last task (one number, not an average).",
    "BWT (GEM): `mean_{j<T-1} (R[T-1][j] - R[j][j])`, i.e. minus Forgetting. "
    "FWT (GEM): `mean_{j>=1} (R[j-1][j] - b[j])`.",
    "Joint training learns all tasks at once and is evaluated only after the last task, so its "
    "history-based metrics are n/a and its curves are single points.",
    "Cells show the mean ± sample std over seeds; with one seed only the mean is shown. "
    "Curves show the mean over seeds.",
]


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
    ok = ok and isinstance(entry.get("params"), dict) and all(isinstance(entry["params"].get(k), int) for k in ("trained", "backbone"))
    ok = ok and all(isinstance(entry.get(k), dict) and all(
        entry[k].get(s) is None or isinstance(entry[k].get(s), (int, float)) for s in ("mean", "std")) for k in METRIC_KEYS)
    if not ok:
        raise DataError(f"{path}: no well-formed entry for '{key}' (metric, n_seeds, params, mean/std of {list(METRIC_KEYS)}); "
                        "rerun the aggregate stage")
    return entry


def load_matrix(path: Path) -> tuple[list[str], np.ndarray]:
    """Task labels and the (T+1)×T score matrix of a matrix CSV: rows init, task0..; NaN where not evaluated."""
    rows = _read_csv(path)
    tasks = rows[0][1:]
    index = {label: k for k, label in enumerate([row_label(INIT_ROW), *tasks])}
    values = np.full((len(tasks) + 1, len(tasks)), math.nan)
    for r in rows[1:]:
        if r[0] not in index:
            raise DataError(f"{path}: unknown row '{r[0]}'; expected {list(index)}")
        try:
            values[index[r[0]]] = [float(v) if v else math.nan for v in r[1:]]
        except ValueError as exc:
            raise DataError(f"{path}: non-numeric cell: {exc}") from None
    return tasks, values


def mean_over_seeds(matrices: list[np.ndarray]) -> np.ndarray:
    """Cell-wise mean of same-shaped matrices over the seeds that have the cell (NaN where none has it)."""
    stack = np.stack(matrices)
    count = (~np.isnan(stack)).sum(axis=0)
    return np.where(count > 0, np.nansum(stack, axis=0) / np.maximum(count, 1), math.nan)


def seen_average(values: np.ndarray) -> np.ndarray:
    """``mean_{j<=i} R[i][j]`` after each task i (NaN where a row is incomplete) of a (T+1)×T matrix."""
    return np.array([values[1 + i, : i + 1].mean() for i in range(values.shape[1])])


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


def grouped(all_runs: list[Run]) -> dict[str, dict[str, list[Run]]]:
    """setting -> method -> runs (seeds), in plan order."""
    order: dict[str, dict[str, list[Run]]] = {}
    for r in all_runs:
        order.setdefault(r.setting, {}).setdefault(r.method, []).append(r)
    return order


def heatmap_png(r: Run) -> str:
    """Report-relative path of a run's heatmap."""
    return f"{HEATMAPS}/{matrix_name(r)}.png"


def seen_png(setting: str) -> str:
    """Report-relative path of a setting's average-over-seen-tasks plot."""
    return f"{CURVES}/{setting}__seen.png"


def tasks_png(setting: str) -> str:
    """Report-relative path of a setting's per-task curves."""
    return f"{CURVES}/{setting}__tasks.png"


def document(params: dict[str, Any], bench: str, groups: dict[str, dict[str, Any]], all_runs: list[Run],
             curves: dict[str, dict[str, list[tuple[float, str]]]]) -> list[Block]:
    """The report's content, independent of the output format (``curves``: :func:`rate_curves`)."""
    blocks: list[Block] = [
        ("h1", params["report"]["title"]),
        ("p", f"Benchmark `{bench}`. Data: [per-seed metrics (CSV)](../summary.csv), "
              "[metrics over seeds (JSON)](../metrics.json), [score matrices (CSV)](../matrices/)."),
        ("toc",),
        ("h2", "How to read"),
        ("ul", HOW_TO_READ),
        ("h2", "AP per method and setting"),
        ("img", "AP per setting (mean over seeds, error bar: std over seeds); '–': not run in that setting.", AP_PLOT),
    ]
    order = grouped(all_runs)
    settings = list(order)
    methods = list(dict.fromkeys(r.method for r in all_runs))
    for key, label in MAIN_COLUMNS:
        blocks += [
            ("h3", f"{label}: method × setting"),
            ("table", ["Method", *settings],
             [[m, *(f"{mean_std(groups[f'{s}/{m}'][key])} (n={groups[f'{s}/{m}']['n_seeds']})" if f"{s}/{m}" in groups
                    else "–" for s in settings)] for m in methods]),
        ]
    if curves:
        blocks += [
            ("h2", "AP and forgetting against the missing rate"),
            ("img", "Settings whose training and test data miss the same modality at the same rate, by the "
                    "missing type (the complete setting is rate 0 of every type); mean over seeds, error bar: "
                    "std over seeds. Only methods run at two rates or more of a type are drawn.", RATE_PLOT),
        ]
    first = {}
    for key, g in groups.items():
        first.setdefault(key.split("/", 1)[1], g["params"])
    blocks += [
        ("h2", "Trainable parameters"),
        ("p", "What a checkpoint of the method holds: the parameters it adds or trains (earlier tasks' frozen "
              "prompt rows included), against the backbone's own parameters."),
        ("table", ["Method", "Parameters", "% of the backbone"],
         [[m, f"{p['trained']:,}", f"{100 * p['trained'] / p['backbone']:.2f}"] for m, p in first.items()]),
    ]
    for setting, by_method in order.items():
        spec = params["settings"][setting]
        others = [f"{m}: " + ", ".join(f"[seed {r.seed}]({heatmap_png(r)})" for r in rs[1:]) for m, rs in by_method.items() if len(rs) > 1]
        blocks += [
            ("h2", f"Setting `{setting}`"),
            ("p", f"Missing modalities. Train: {describe(spec['train'], spec['both_ratio'])}; "
                  f"test: {describe(spec['test'], spec['both_ratio'])}."),
            ("h3", "Performance and forgetting"),
            ("table", ["Method", "Metric", *(label for _, label in MAIN_COLUMNS), "Seeds"],
             [[m, groups[f"{setting}/{m}"]["metric"], *(mean_std(groups[f"{setting}/{m}"][k]) for k, _ in MAIN_COLUMNS),
               str(groups[f"{setting}/{m}"]["n_seeds"])] for m in by_method]),
            ("h3", "Transfer"),
            ("table", ["Method", *(label for _, label in TRANSFER_COLUMNS)],
             [[m, *(mean_std(groups[f"{setting}/{m}"][k]) for k, _ in TRANSFER_COLUMNS)] for m in by_method]),
            ("h3", "Average score on the tasks seen so far"),
            ("img", "`mean_{j<=i} R[i][j]` after each task i, mean over seeds (after the last task: AP).", seen_png(setting)),
            ("h3", "Score on each task during training"),
            ("img", "`R[i][j]` of each task j (one line per task) after each task i, mean over seeds; "
                    "dotted: before task j is trained.", tasks_png(setting)),
            ("h3", "Score matrices"),
            ("gallery", "`R[i][j]` of each method's first seed (colour: 0 to 100; grey: not evaluated; "
                        "row init: the untrained model).", [(f"{m}, seed {rs[0].seed}", heatmap_png(rs[0])) for m, rs in by_method.items()]),
        ]
        if others:
            blocks += [("p", "Heatmaps of the other seeds:"), ("ul", others)]
    return blocks


def rate_curves(settings: dict[str, Any], all_runs: list[Run], groups: dict[str, dict[str, Any]]
                ) -> dict[str, dict[str, list[tuple[float, str]]]]:
    """``{type: {method: [(rate, setting), ...]}}`` over the settings whose train and test specs are equal
    (rate 0 counts for every type), keeping the curves with two rates or more."""
    out: dict[str, dict[str, list[tuple[float, str]]]] = {}
    for r in all_runs:
        spec = settings[r.setting]
        if spec["train"] != spec["test"] or f"{r.setting}/{r.method}" not in groups:
            continue
        rate, kind = float(spec["train"]["ratio"]), spec["train"]["type"]
        for t in (MODALITY_TYPES if rate == 0 else (kind,)):
            pts = out.setdefault(t, {}).setdefault(r.method, [])
            if (rate, r.setting) not in pts:
                pts.append((rate, r.setting))
    return {t: {m: sorted(p) for m, p in ms.items() if len({x for x, _ in p}) > 1}
            for t, ms in out.items() if any(len({x for x, _ in p}) > 1 for p in ms.values())}


def plot_missing_rate(path: Path, curves: dict[str, dict[str, list[tuple[float, str]]]],
                      groups: dict[str, dict[str, Any]], colors: dict[str, str]) -> None:
    """Rows AP and Forgetting, one column per missing type: a line per method over the missing rate."""
    types = [t for t in MODALITY_TYPES if t in curves]
    with figure(path, min(CONTENT_WIDTH_PX, 120 + 280 * len(types)), 470) as fig:
        axes = fig.subplots(2, len(types), sharex=True, sharey=True, squeeze=False)
        for col, t in enumerate(types):
            for row, key in enumerate(("AP", "forgetting")):
                ax = axes[row, col]
                for m, pts in curves[t].items():
                    stats = [groups[f"{s}/{m}"][key] for _, s in pts]
                    xs = [100 * x for (x, _), st in zip(pts, stats) if st["mean"] is not None]
                    ys = [st["mean"] for st in stats if st["mean"] is not None]
                    es = [st["std"] or 0.0 for st in stats if st["mean"] is not None]
                    if xs:
                        ax.errorbar(xs, ys, yerr=es, fmt="-o", ms=3, lw=1.4, capsize=2, color=colors[m], label=m)
                ax.grid(alpha=0.3)
                if row == 0:
                    ax.set_title(f"{t} missing")
                if col == 0:
                    ax.set_ylabel(f"{key} (%)")
        axes[0, 0].set_xlim(-5, 105)
        fig.supxlabel("missing rate (%)", fontsize=9)
        handles = {lab: h for ax in axes.ravel() for h, lab in zip(*ax.get_legend_handles_labels())}
        fig.legend(list(handles.values()), list(handles), loc="outside right upper")


def plot_heatmap(path: Path, title: str, tasks: list[str], values: np.ndarray) -> None:
    """An annotated heatmap of one run's (T+1)×T score matrix (0-100 colour scale, grey where not evaluated)."""
    n = len(tasks)
    lines = title.count("\n") + 1
    with figure(path, 120 + 44 * n, 100 + 14 * lines + 26 * (n + 1), margins_px=(58, 62, 40, 10 + 14 * lines)) as fig:
        ax = fig.add_subplot()
        ax.set_facecolor("#e6e6e6")
        im = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0, vmax=100, aspect="auto")
        ax.set_xticks(range(n), tasks)
        ax.set_yticks(range(n + 1), [row_label(INIT_ROW), *tasks])
        ax.set_xlabel("score on")
        ax.set_ylabel("after training")
        ax.tick_params(length=0)
        ax.spines[:].set_visible(False)
        for (i, j), v in np.ndenumerate(values):
            if not math.isnan(v):
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=8, color="white" if v < 50 else "black")
        ax.set_title(title)
        fig.colorbar(im, ax=ax, fraction=0.08, pad=0.03).outline.set_visible(False)


def _grid(n: int, ncols: int) -> tuple[int, int]:
    """(rows, columns) of a grid of at most ``ncols`` columns for ``n`` panels."""
    cols = min(ncols, n)
    return -(-n // cols), cols


def _hide_unused(axes: np.ndarray, n: int) -> None:
    """Hide the panels after the n-th; those above them keep their x tick labels."""
    flat, ncols = axes.ravel(), axes.shape[1]
    for k in range(n, flat.size):
        flat[k].set_visible(False)
        flat[k - ncols].tick_params(labelbottom=True)


def _score_axis(ax: Any) -> None:
    """A 0-100 % y axis with room for markers at the ends."""
    ax.set_ylim(-4, 104)
    ax.set_yticks(range(0, 101, 20))


def plot_ap(path: Path, settings: list[str], methods: list[str], groups: dict[str, dict[str, Any]], colors: dict[str, str]) -> None:
    """One panel per setting: a horizontal bar per method, AP mean with the std over seeds as error bar."""
    nrows, ncols = _grid(len(settings), 4)
    with figure(path, CONTENT_WIDTH_PX, 50 + nrows * (40 + 20 * len(methods))) as fig:
        axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)
        for ax, s in zip(axes.ravel(), settings):
            for k, m in enumerate(methods):
                stat = groups.get(f"{s}/{m}", {}).get("AP", {"mean": None, "std": None})
                if stat["mean"] is None:
                    ax.text(2, k, "–", va="center", color="#888888")
                else:
                    ax.barh(k, stat["mean"], 0.7, xerr=stat["std"], color=colors[m], error_kw={"capsize": 2, "elinewidth": 0.8})
            ax.set_title(s)
            ax.grid(axis="x", alpha=0.3)
            ax.set_axisbelow(True)
        axes[0, 0].set_yticks(range(len(methods)), methods)
        axes[0, 0].set_ylim(len(methods) - 0.5, -0.5)
        axes[0, 0].set_xlim(0, 100)
        _hide_unused(axes, len(settings))
        fig.supxlabel("AP (%)", fontsize=9)


def plot_seen_average(path: Path, tasks: list[str], means: dict[str, np.ndarray], colors: dict[str, str], metric: str) -> None:
    """One line per method: the mean score on the tasks seen so far after each task."""
    with figure(path, CONTENT_WIDTH_PX, 360) as fig:
        ax = fig.add_subplot()
        for method, values in means.items():
            ax.plot(range(len(tasks)), seen_average(values), "-o", ms=4, lw=1.6, color=colors[method], label=method)
        ax.set_xticks(range(len(tasks)), tasks)
        _score_axis(ax)
        ax.set_xlabel("after training")
        ax.set_ylabel(f"mean {metric} on seen tasks (%)")
        ax.grid(alpha=0.3)
        fig.legend(loc="outside right upper")


def plot_task_curves(path: Path, tasks: list[str], means: dict[str, np.ndarray], metric: str) -> None:
    """One panel per method, one line per task j: its score after each task i (dotted before j is trained)."""
    n = len(tasks)
    colors = palette(n)
    nrows, ncols = _grid(len(means), 4)
    with figure(path, min(CONTENT_WIDTH_PX, 80 + 240 * ncols), 70 + 190 * nrows) as fig:
        axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)
        for ax, (method, values) in zip(axes.ravel(), means.items()):
            for j in range(n):
                ax.plot(range(j + 1), values[1 : j + 2, j], ":", lw=1, color=colors[j])
                ax.plot(range(j, n), values[1 + j :, j], "-o", ms=3, lw=1.5, color=colors[j], label=tasks[j])
            ax.set_title(method)
            ax.grid(alpha=0.3)
        axes[0, 0].set_xticks(range(n), tasks)
        _score_axis(axes[0, 0])
        _hide_unused(axes, len(means))
        fig.supxlabel("after training", fontsize=9)
        fig.supylabel(f"{metric} (%)", fontsize=9)
        fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside upper center", ncols=n, title="score on")


def run(stage: Any, params: dict[str, Any]) -> None:
    """Stage handler: read the aggregate outputs, write the report folder."""
    a = stage.args
    metrics_json, summary_csv, matrices_dir = Path(a["metrics"]), Path(a["summary"]), Path(a["matrices"])
    metrics_doc = read_object(metrics_json, "aggregate")
    all_runs = [Run(r["method"], r["setting"], int(r["seed"])) for r in a["runs"]]
    groups = {key: load_group(metrics_doc, key, metrics_json) for key in dict.fromkeys(f"{r.setting}/{r.method}" for r in all_runs)}
    summary = _read_csv(summary_csv)
    if summary[0][0] != "benchmark" or len({row[0] for row in summary[1:]}) != 1:
        raise DataError(f"{summary_csv}: expected a 'benchmark' first column with one benchmark name; rerun the aggregate stage")
    bench = summary[1][0]
    matrices = {r: load_matrix(matrices_dir / f"{matrix_name(r)}.csv") for r in all_runs}
    tasks = matrices[all_runs[0]][0]
    if any(t != tasks for t, _ in matrices.values()):
        raise DataError(f"{matrices_dir}: the matrices do not all have the same task columns; rerun the aggregate stage")
    order = grouped(all_runs)
    methods = list(dict.fromkeys(r.method for r in all_runs))
    colors = dict(zip(methods, palette(len(methods))))
    curves = rate_curves(params["settings"], all_runs, groups)
    blocks = document(params, bench, groups, all_runs, curves)

    sr = stage_run(stage, params)
    with sr:
        out = sr.tmp(a["out"])
        (out / HEATMAPS).mkdir()
        (out / CURVES).mkdir()
        for r, (_, values) in matrices.items():
            plot_heatmap(out / heatmap_png(r), f"{r.setting}\n{r.method} / seed {r.seed}", tasks, values)
        plot_ap(out / AP_PLOT, list(order), methods, groups, colors)
        if curves:
            plot_missing_rate(out / RATE_PLOT, curves, groups, colors)
        for setting, by_method in order.items():
            means = {m: mean_over_seeds([matrices[r][1] for r in rs]) for m, rs in by_method.items()}
            metric = "/".join(dict.fromkeys(groups[f"{setting}/{m}"]["metric"] for m in by_method))
            plot_seen_average(out / seen_png(setting), tasks, means, colors, metric)
            plot_task_curves(out / tasks_png(setting), tasks, means, metric)
        (out / "index.md").write_text(to_markdown(blocks))
        (out / "index.html").write_text(to_html(blocks))
