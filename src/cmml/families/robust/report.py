"""Stage handler ``robust/report``: every evaluate stage's scores -> metrics over seeds, tables, curves.

Writes ``results/robust/metrics.json`` -- groups ``<fill>/<model>`` holding ``kind``, ``start``,
``params`` (counts) and per condition ``<group>/<condition>`` the per-seed values, their mean and
sample std (the ``{group: {metric: {mean, std}}}`` shape ``cmml compare`` reads), plus ``_meta``
(benchmark, metric, seeds) -- and the report page
``results/robust/report/index.{md,html}``: per fill the paper's table (rows = model, columns =
available combination, then the listed settings), the missing-rate curves, the zeros-minus-MAP
difference per cell, and the trainable parameters per combination as a share of the backbone.
Every input is read and checked before any output is opened.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from cmml.errors import DataError
from cmml.families.robust.plan import SECTION
from cmml.pipeline.atomic import write_json
from cmml.provenance.sidecar import stage_run
from cmml.report.render import CONTENT_WIDTH_PX, Block, figure, palette, to_html, to_markdown

SCORES = "scores.json"
GROUPS = ("combinations", "settings", "rates")
KIND_LABEL = {"complete": "no adaptation", "ssf": "SSF", "lora": "LoRA", "bitfit": "BitFit",
              "dedicated": "dedicated per combination", "dropout": "modality dropout"}


def read_scores(path: Path) -> dict[str, Any]:
    """A checked ``scores.json``; DataError naming the file otherwise."""
    if not path.is_file():
        raise DataError(f"{path}: missing; run the robust evaluate stage first")
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON: {exc}") from None
    fills = doc.get("fills") if isinstance(doc, dict) else None
    ok = isinstance(fills, dict) and bool(fills) and isinstance(doc.get("metric"), str)
    ok = ok and all(isinstance(f, dict) and isinstance(f.get("models"), dict) and all(
        isinstance(m, dict) and all(isinstance(m.get(g), dict) for g in (*GROUPS, "params")) for m in f["models"].values())
        for f in fills.values())
    if not ok:
        raise DataError(f"{path}: expected 'metric' and 'fills' with 'models' holding {list(GROUPS)} and 'params' "
                        "per model; rerun the robust evaluate stage")
    return doc


def stat(values: list[float]) -> dict[str, Any]:
    """Mean and sample std (None for one value) of per-seed values."""
    return {"values": values, "mean": round(statistics.fmean(values), 4),
            "std": round(statistics.stdev(values), 4) if len(values) > 1 else None}


def aggregate(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """``{fill: {model: {group: {condition: stat}, kind, start, params}}}`` over seeds."""
    out: dict[str, Any] = {}
    for doc in docs:
        for fill, fdoc in doc["fills"].items():
            for name, m in fdoc["models"].items():
                slot = out.setdefault(fill, {}).setdefault(name, {"kind": m["kind"], "start": m.get("start"),
                                                                "params": m["params"], "_v": {}})
                for g in GROUPS:
                    for k, v in m[g].items():
                        slot["_v"].setdefault(g, {}).setdefault(k, []).append(v)
    for models in out.values():
        for slot in models.values():
            for g, conds in slot.pop("_v").items():
                slot[g] = {k: stat(vs) for k, vs in conds.items()}
    return out


def flat(agg: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """metrics.json: one group per (fill, model), one entry per condition."""
    out: dict[str, Any] = {"_meta": meta}
    for fill, models in agg.items():
        for name, m in models.items():
            out[f"{fill}/{name}"] = {"kind": m["kind"], "start": m["start"], "params": m["params"],
                                     **{f"{g}/{k}": v for g in GROUPS for k, v in m[g].items()}}
    return out


def cell(s: dict[str, Any] | None) -> str:
    """``mean ± std`` (the mean alone for one seed)."""
    if s is None:
        return "n/a"
    return f"{s['mean']:.1f}" if s["std"] is None else f"{s['mean']:.1f} ± {s['std']:.1f}"


def label(name: str, m: dict[str, Any]) -> str:
    """Row label: model name, its kind and what it starts from."""
    start = f" on `{m['start']}`" if m.get("start") else ""
    return f"`{name}` ({KIND_LABEL[m['kind']]}{start})"


def curves_png(fill: str) -> str:
    return f"curves__{fill}.png"


def plot_rates(path: Path, models: dict[str, Any], metric: str) -> None:
    """Score against missing rate, one line per model (mean over seeds, ± std band)."""
    colors = palette(len(models))
    with figure(path, CONTENT_WIDTH_PX, 380) as fig:
        ax = fig.subplots()
        for (name, m), c in zip(models.items(), colors):
            rates = sorted(m["rates"], key=float)
            x = [float(r) for r in rates]
            mean = [m["rates"][r]["mean"] for r in rates]
            std = [m["rates"][r]["std"] or 0.0 for r in rates]
            ax.plot(x, mean, marker="o", color=c, label=name)
            ax.fill_between(x, [a - b for a, b in zip(mean, std)], [a + b for a, b in zip(mean, std)], color=c, alpha=0.12)
        ax.set_xlabel("share of test samples missing a modality")
        ax.set_ylabel(f"{metric} (%)")
        ax.legend(loc="best", ncols=2)


def document(params: dict[str, Any], bench: str, agg: dict[str, Any], metric: str, seeds: list[int],
             combinations: list[str]) -> list[Block]:
    """The report page as blocks (columns: ``combinations`` in their order, then the settings)."""
    fills = list(agg)
    first = agg[fills[0]]
    combos = list(combinations)
    settings = list(params[SECTION]["settings"])
    blocks: list[Block] = [
        ("h1", f"Robust adaptation per missing-modality combination ({bench})"),
        ("p", "A **re-implementation from the paper's description** (Reza, Prater-Bennette and Asif, \"Robust "
              "Multimodal Learning with Missing Modalities via Parameter-Efficient Adaptation\", TPAMI 2025): no code "
              "was released, so every choice the paper leaves open is cmml's and listed in `docs/robust.md`."),
        ("p", f"{metric} (%) on the test split of every class, mean ± sample std over seeds {seeds}. Columns: "
              "the modalities available to every test sample (the others filled by the fill policy), then the "
              "listed missing settings' test tables (mixed batches). Adapted and dedicated models pick each "
              "sample's parameters by its known combination."),
        ("toc",),
    ]
    header = ["model", *combos, *settings]
    for fill in fills:
        blocks.append(("h2", f"Robustness table, missing input filled by `{fill}`"))
        rows = [[label(n, m), *(cell(m["combinations"].get(c)) for c in combos), *(cell(m["settings"].get(s)) for s in settings)]
                for n, m in agg[fill].items()]
        blocks.append(("table", header, rows))
        blocks.append(("img", f"{metric} against the share of test samples missing a modality (fill `{fill}`); "
                              "each such sample lacks a uniformly drawn incomplete combination.", curves_png(fill)))
    if len(fills) > 1:
        a, b = fills[0], fills[1]
        blocks.append(("h2", f"Fill convention: `{a}` minus `{b}`"))
        blocks.append(("p", f"Difference of the seed means ({metric} points) per model and test combination; "
                            "the complete-data models are the same checkpoints under both conventions."))
        rows = [[label(n, m), *(f"{m['combinations'][c]['mean'] - agg[b][n]['combinations'][c]['mean']:+.1f}"
                                for c in combos)] for n, m in agg[a].items() if n in agg[b]]
        blocks.append(("table", ["model", *combos], rows))
    blocks.append(("h2", "Trainable parameters per combination"))
    size = next(iter(first.values()))["params"]["backbone"]
    blocks.append(("p", f"Values trained for one combination and their share of the backbone ({size:,} values). "
                        "An adapter set is added to its frozen start model; a dedicated model is a whole model per "
                        "combination; the others are one model for every combination."))
    rows = [[label(n, m), *(f"{m['params']['per_combination'][c]:,} ({m['params']['percent_of_backbone'][c]:.2f} %)"
                            for c in combos)] for n, m in first.items()]
    blocks.append(("table", ["model", *combos], rows))
    return blocks


def run(stage: Any, params: dict[str, Any]) -> None:
    """Stage handler: aggregate every evaluate output, write metrics.json and the report folder."""
    a = stage.args
    docs = [read_scores(Path(e["eval"]) / SCORES) for e in a["evals"]]
    metrics = {d["metric"] for d in docs}
    if len(metrics) != 1:
        raise DataError(f"{[e['eval'] for e in a['evals']]}: the evaluate outputs disagree on the metric ({sorted(metrics)})")
    metric = metrics.pop()
    agg = aggregate(docs)
    order = list(params[SECTION]["models"])  # params order: JSON files sort their keys
    agg = {f: {n: agg[f][n] for n in sorted(agg[f], key=lambda n: (order.index(n) if n in order else len(order), n))}
           for f in params[SECTION]["fills"] if f in agg}
    combos = docs[0].get("combinations")
    if not isinstance(combos, list) or any(d.get("combinations") != combos for d in docs):
        raise DataError(f"{[e['eval'] for e in a['evals']]}: the evaluate outputs disagree on the combinations; rerun them")
    seeds = sorted({int(e["seed"]) for e in a["evals"]})
    for fill, models in agg.items():
        for name, m in models.items():
            short = [g for g in GROUPS for s in m[g].values() if len(s["values"]) != len(seeds)]
            if short or any(math.isnan(s["mean"]) for g in GROUPS for s in m[g].values()):
                raise DataError(f"{a['metrics']}: model {name!r} (fill {fill}) lacks scores of some seeds in {short}")
    blocks = document(params, a["bench"], agg, metric, seeds, combos)
    with stage_run(stage, params, extra={"fills": list(agg)}) as sr:
        write_json(sr.tmp(a["metrics"]), flat(agg, {"benchmark": a["bench"], "metric": metric, "seeds": seeds}))
        out = sr.tmp(a["out"])
        for fill, models in agg.items():
            plot_rates(out / curves_png(fill), models, metric)
        (out / "index.md").write_text(to_markdown(blocks))
        (out / "index.html").write_text(to_html(blocks))
