"""aggregate + report stages on a synthetic tree of scores.json files (hand-computed expectations)."""

from __future__ import annotations

import csv
import json
import math
import shutil
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from small import keep_families
from cmml.errors import DataError
from cmml.families.cmml import aggregate, report
from cmml.families.cmml.runs import INIT_ROW as INIT_TASK
from cmml.families.cmml.runs import Run, row_label
from cmml.pipeline.plan import find, load, plan
from cmml.report import render

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# finetune_head: full rows (init + task0..2). joint: only the last row.
ROWS: dict[tuple[str, int], dict[int, list[float]]] = {
    ("finetune_head", 0): {INIT_TASK: [10.0, 4.0, 2.0], 0: [80.0, 10.0, 5.0], 1: [85.0, 70.0, 8.0], 2: [50.0, 40.0, 90.0]},
    ("finetune_head", 1): {INIT_TASK: [5.0, 8.0, 3.0], 0: [70.0, 20.0, 10.0], 1: [65.0, 60.0, 12.0], 2: [40.0, 50.0, 80.0]},
    ("joint", 0): {2: [70.0, 75.0, 80.0]},
    ("joint", 1): {2: [60.0, 65.0, 70.0]},
}
# Per run, by hand:
#   finetune_head seed0: AP (50+40+90)/3 = 60; forgetting ((80-50)+(70-40))/2 = 30;
#     forgetting_max ((max(80,85)-50)+(70-40))/2 = 32.5; last 90; bwt -30; fwt ((10-4)+(8-2))/2 = 6
#   finetune_head seed1: AP (40+50+80)/3 = 56.6667; forgetting ((70-40)+(60-50))/2 = 20;
#     forgetting_max ((max(70,65)-40)+(60-50))/2 = 20; last 80; bwt -20; fwt ((20-8)+(12-3))/2 = 10.5
#   joint seed0: AP 75, last 80; seed1: AP 65, last 70; history metrics undefined (null / empty).
PER_RUN = {
    ("finetune_head", 0): {"AP": 60.0, "forgetting": 30.0, "forgetting_max": 32.5, "last": 90.0, "bwt": -30.0, "fwt": 6.0},
    ("finetune_head", 1): {"AP": 56.6667, "forgetting": 20.0, "forgetting_max": 20.0, "last": 80.0, "bwt": -20.0, "fwt": 10.5},
    ("joint", 0): {"AP": 75.0, "forgetting": None, "forgetting_max": None, "last": 80.0, "bwt": None, "fwt": None},
    ("joint", 1): {"AP": 65.0, "forgetting": None, "forgetting_max": None, "last": 70.0, "bwt": None, "fwt": None},
}
# Over the two seeds: mean and sample std (|a-b|/sqrt 2).
OVER_SEEDS = {
    "finetune_head": {"AP": (58.3333, 2.357), "forgetting": (25.0, 7.0711), "forgetting_max": (26.25, 8.8388),
                      "last": (85.0, 7.0711), "bwt": (-25.0, 7.0711), "fwt": (8.25, 3.182)},
    "joint": {"AP": (70.0, 7.0711), "last": (75.0, 7.0711),
              "forgetting": (None, None), "forgetting_max": (None, None), "bwt": (None, None), "fwt": (None, None)},
}


@pytest.fixture
def params(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """params.yaml with 2 methods x 1 setting x 2 seeds, T=3, in a tmp cwd."""
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    raw = yaml.safe_load((tmp_path / "params.yaml").read_text())
    keep_families(raw)  # the cmml family only
    raw["tasks"]["num_tasks"] = 3
    raw["cmml"]["experiments"] = {"main": {"methods": ["finetune_head", "joint"], "settings": ["both70"], "seeds": [0, 1]}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    return load("params.yaml")


PARAMS = {"finetune_head": 1_300, "joint": 2_600}  # trained parameters per method in the fake scores


def eval_dir(params: dict[str, Any], method: str, seed: int) -> Path:
    """The run's evaluation directory, as the plan names it."""
    return Path(find(plan(params), f"cmml/run/both70/{method}/seed{seed}").args["eval"])


def write_scores(params: dict[str, Any], metric: str = "accuracy") -> None:
    """One scores.json per run with every evaluated row (secondary f1_micro = primary - 1 for F1)."""
    for (method, seed), rows in ROWS.items():
        d = eval_dir(params, method, seed)
        d.mkdir(parents=True)
        doc = {"metric": metric, "counts": [30, 30, 30], "scenario": "class", "rows": {
            row_label(t): {metric: vals} if metric == "accuracy" else {metric: vals, "f1_micro": [v - 1 for v in vals]}
            for t, vals in rows.items()}, "params": {"trained": PARAMS[method], "backbone": 100_000}}
        (d / "scores.json").write_text(json.dumps(doc))


def run_stage(params: dict[str, Any], name: str) -> None:
    mod = aggregate if name == "aggregate" else report
    mod.run(find(plan(params), f"cmml/{name}"), params)


def leftovers(root: Path) -> list[Path]:
    """Temp files/dirs a stage may have left (dot-prefixed)."""
    return list(root.rglob(".*")) if root.exists() else []


def test_aggregate_outputs_match_hand_computation(params: dict[str, Any]) -> None:
    write_scores(params)
    run_stage(params, "aggregate")

    doc = json.loads(Path("results/cmml/metrics.json").read_text())
    assert sorted(doc) == ["both70/finetune_head", "both70/joint"]
    for method, expect in OVER_SEEDS.items():
        entry = doc[f"both70/{method}"]
        assert entry["metric"] == "accuracy" and entry["n_seeds"] == 2
        assert entry["params"] == {"trained": PARAMS[method], "backbone": 100_000}
        for k, (mean, std) in expect.items():
            if mean is None:
                assert entry[k] == {"mean": None, "std": None}, k
            else:
                assert entry[k]["mean"] == pytest.approx(mean, abs=1e-4), k
                assert entry[k]["std"] == pytest.approx(std, abs=1e-4), k

    with open("results/cmml/summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == aggregate.SUMMARY_COLUMNS
    assert [(r["method"], int(r["seed"])) for r in rows] == list(PER_RUN)
    for r in rows:
        assert (r["benchmark"], r["setting"], r["metric"]) == ("embedded", "both70", "accuracy")
        for k, v in PER_RUN[(r["method"], int(r["seed"]))].items():
            if v is None:
                assert r[k] == "", k
            else:
                assert float(r[k]) == pytest.approx(v, abs=1e-4), k

    mats = Path("results/cmml/matrices")
    assert sorted(p.name for p in mats.iterdir()) == [
        "both70__finetune_head__seed0.csv", "both70__finetune_head__seed1.csv", "both70__joint__seed0.csv", "both70__joint__seed1.csv"]
    assert (mats / "both70__finetune_head__seed0.csv").read_text().splitlines() == [
        "row,task0,task1,task2", "init,10.00,4.00,2.00", "task0,80.00,10.00,5.00", "task1,85.00,70.00,8.00", "task2,50.00,40.00,90.00"]
    assert (mats / "both70__joint__seed1.csv").read_text().splitlines() == ["row,task0,task1,task2", "task2,60.00,65.00,70.00"]

    side = json.loads(Path("results/cmml/aggregate.prov.json").read_text())
    assert side["stage"] == "cmml.families.cmml.aggregate" and "results/cmml/metrics.json" in side["outputs"]
    assert leftovers(Path("results")) == []


def test_aggregate_uses_primary_metric_f1(params: dict[str, Any]) -> None:
    write_scores(params, metric="f1_macro")
    run_stage(params, "aggregate")
    entry = json.loads(Path("results/cmml/metrics.json").read_text())["both70/finetune_head"]
    assert entry["metric"] == "f1_macro"
    assert entry["AP"]["mean"] == pytest.approx(58.3333, abs=1e-4)


def test_aggregate_output_is_stable_text(params: dict[str, Any]) -> None:
    write_scores(params)
    run_stage(params, "aggregate")
    files = [Path("results/cmml/metrics.json"), *Path("results/cmml").rglob("*.csv")]
    first = {p: p.read_bytes() for p in files}
    run_stage(params, "aggregate")
    assert {p: p.read_bytes() for p in first} == first


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_text("{not json"), "not valid JSON"),
    (lambda p: p.unlink(), "missing"),
    (lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "counts": [30, 30]})), "'counts'"),
    (lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "rows": {}})), "'rows'"),
    (lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "params": {"trained": -1, "backbone": 5}})), "'params'"),
])
def test_aggregate_bad_scores_names_file_and_writes_nothing(params: dict[str, Any], damage: Any, message: str) -> None:
    write_scores(params)
    bad = eval_dir(params, "finetune_head", 1) / "scores.json"
    damage(bad)
    with pytest.raises(DataError, match=message) as err:
        run_stage(params, "aggregate")
    assert str(bad) in str(err.value)
    assert not Path("results").exists()


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (asserting the signature)."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR", path
    return struct.unpack(">II", data[16:24])


def test_report_contains_every_method_and_valid_pngs(params: dict[str, Any]) -> None:
    write_scores(params)
    run_stage(params, "aggregate")
    run_stage(params, "report")

    out = Path("results/cmml/report")
    md = (out / "index.md").read_text()
    page = (out / "index.html").read_text()
    assert md.startswith(f"# {params['report']['title']}\n")
    for text in (md, page):
        for needle in ("finetune_head", "joint", "both70", "58.33 ± 2.36", "85.00 ± 7.07", "8.25 ± 3.18", "n/a",
                       "35% text, 35% image", "Forgetting (max)", "How to read"):
            assert needle in text, needle
    assert "| finetune_head | accuracy | 58.33 ± 2.36 | 25.00 ± 7.07 | 85.00 ± 7.07 | 2 |" in md
    assert "| finetune_head | 58.33 ± 2.36 (n=2) |" in md  # the method x setting overview (AP)
    assert "| finetune_head | 1,300 | 1.30 |" in md and "| joint | 2,600 | 2.60 |" in md
    assert not (out / report.RATE_PLOT).exists()  # one missing rate only: no curve
    assert "http" not in page and "<table>" in page

    heatmaps = sorted((out / "heatmaps").iterdir())
    assert [p.stem for p in heatmaps] == [p.stem for p in sorted(Path("results/cmml/matrices").iterdir())]
    for p in heatmaps:
        assert png_size(p) == (252, 232)  # sized by T=3 and the two title lines
        assert f"heatmaps/{p.name}" in md
    # each method's first seed inline, the other seeds linked
    for name in ("both70__finetune_head__seed0", "both70__joint__seed0"):
        assert f'src="heatmaps/{name}.png"' in page
    for name in ("both70__finetune_head__seed1", "both70__joint__seed1"):
        assert f'href="heatmaps/{name}.png"' in page
    for name in ("ap.png", "curves/both70__seen.png", "curves/both70__tasks.png"):
        assert png_size(out / name)[0] <= render.CONTENT_WIDTH_PX
        assert f"]({name})" in md and f'src="{name}"' in page
    assert sorted(p.name for p in out.iterdir()) == ["ap.png", "curves", "heatmaps", "index.html", "index.md"]
    assert json.loads(Path(f"{out}.prov.json").read_text())["stage"] == "cmml.families.cmml.report"
    assert leftovers(Path("results")) == []


def test_report_curves_from_matrices(params: dict[str, Any]) -> None:
    write_scores(params)
    run_stage(params, "aggregate")
    mats = {(m, s): report.load_matrix(Path(f"results/cmml/matrices/both70__{m}__seed{s}.csv")) for m, s in ROWS}
    tasks, joint0 = mats[("joint", 0)]
    assert tasks == ["task0", "task1", "task2"]
    assert joint0.shape == (4, 3) and np.isnan(joint0[:3]).all() and list(joint0[3]) == [70.0, 75.0, 80.0]
    # seen average by hand: seed0 80, (85+70)/2, 60; seed1 70, (65+60)/2, 56.67 -> mean 75, 70, 58.33 (AP)
    head = report.mean_over_seeds([mats[("finetune_head", s)][1] for s in (0, 1)])
    assert report.seen_average(head) == pytest.approx([75.0, 70.0, 58.3333], abs=1e-4)
    joint = report.seen_average(report.mean_over_seeds([mats[("joint", s)][1] for s in (0, 1)]))
    assert np.isnan(joint[:2]).all() and joint[2] == pytest.approx(70.0)


def test_report_rejects_unknown_matrix_row(params: dict[str, Any]) -> None:
    write_scores(params)
    run_stage(params, "aggregate")
    path = Path("results/cmml/matrices/both70__joint__seed1.csv")
    path.write_text(path.read_text().replace("task2,60", "task9,60"))
    with pytest.raises(DataError, match="unknown row 'task9'") as err:
        run_stage(params, "report")
    assert str(path) in str(err.value)
    assert not Path("results/cmml/report").exists()


def test_report_without_aggregate_names_missing_file(params: dict[str, Any]) -> None:
    with pytest.raises(DataError, match="results/cmml/metrics.json"):
        run_stage(params, "report")
    assert not Path("results").exists()


def test_report_rejects_stale_metrics(params: dict[str, Any]) -> None:
    write_scores(params)
    run_stage(params, "aggregate")
    doc = json.loads(Path("results/cmml/metrics.json").read_text())
    del doc["both70/joint"]
    Path("results/cmml/metrics.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match="both70/joint"):
        run_stage(params, "report")
    assert not Path("results/cmml/report").exists()


def test_rounded_never_negative_zero() -> None:
    assert math.copysign(1.0, aggregate.rounded(-0.00001)) == 1.0
    assert aggregate.rounded(math.nan) is None


def test_rate_curves_group_equal_train_test_settings_by_type(tmp_path: Path) -> None:
    spec = lambda t, r: {"type": t, "ratio": r}  # noqa: E731
    settings = {
        "complete": {"train": spec("both", 0.0), "test": spec("both", 0.0), "both_ratio": 0.5},
        "both10": {"train": spec("both", 0.1), "test": spec("both", 0.1), "both_ratio": 0.5},
        "both70": {"train": spec("both", 0.7), "test": spec("both", 0.7), "both_ratio": 0.5},
        "text70": {"train": spec("text", 0.7), "test": spec("text", 0.7), "both_ratio": 0.5},
        "shift": {"train": spec("both", 0.0), "test": spec("both", 0.7), "both_ratio": 0.5},
    }
    runs = [Run(m, s, 0) for m in ("a", "b") for s in settings if not (m == "b" and s != "both70")]
    groups = {f"{r.setting}/{r.method}": {} for r in runs}
    curves = report.rate_curves(settings, runs, groups)
    # method b has a single rate: no curve; "shift" (train != test) is never on a curve
    assert curves == {"both": {"a": [(0.0, "complete"), (0.1, "both10"), (0.7, "both70")]},
                      "text": {"a": [(0.0, "complete"), (0.7, "text70")]}}
    stat = {"AP": {"mean": 50.0, "std": 2.0}, "forgetting": {"mean": 10.0, "std": None}}
    report.plot_missing_rate(tmp_path / "rate.png", curves, {k: stat for k in groups}, {"a": "#000000", "b": "#111111"})
    width, height = png_size(tmp_path / "rate.png")
    assert width <= render.CONTENT_WIDTH_PX and height > 300
