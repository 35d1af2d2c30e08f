"""Every registered method -- today's and every future one, discovered from the registry --
through a tiny two-task chain of the real stage CLI: train task 0, train task 1 (from task 0's
checkpoint), evaluate every row. A registered method without a params block fails here."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from small import small_params
from cmml.cli import main
from cmml.families.cmml.runs import method_block
from cmml.methods.registry import METHODS
from cmml.pipeline.plan import plan

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = yaml.safe_load((ROOT / "params.yaml").read_text())


def run_for(method: str) -> str:
    """The first run in params.yaml that uses ``method`` (its documented defaults)."""
    for run in DEFAULTS["cmml"]["methods"]:
        if method_block(DEFAULTS, run)["method"] == method:
            return run
    raise AssertionError(f"registered method {method!r} has no params block under cmml.methods in params.yaml")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("every_method")
    p = small_params(8, {"pretrain": 8, "train": 6, "val": 1, "test": 4})
    runs = {run_for(m) for m in METHODS}
    p["cmml"]["methods"] = {r: {**method_block(DEFAULTS, r), "epochs": 1, "batch_size": 8} for r in runs}
    p["cmml"]["experiments"] = {"all": {"methods": sorted(runs), "settings": ["both70"], "seeds": [0]}}
    (root / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    return root


@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_trains_two_tasks_and_evaluates(project: Path, method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project)
    monkeypatch.setenv("CMML_WORKER", "0")
    run = run_for(method)
    params = yaml.safe_load(Path("params.yaml").read_text())
    mine = [s.name for s in plan(params) if s.name.startswith(("code", "data/")) or f"/{run}/" in s.name]
    for name in mine:
        if not Path(f"{next(s for s in plan(params) if s.name == name).sidecar}").is_file():
            assert main(["run", name]) == 0, name
    scores = json.loads(Path(f"runs/cmml/embedded/both70/{run}/seed0/eval/scores.json").read_text())
    joint = METHODS[method].joint
    assert set(scores["rows"]) == ({"task1"} if joint else {"init", "task0", "task1"})
    for row in scores["rows"].values():
        assert all(math.isfinite(v) and 0 <= v <= 100 for v in row["accuracy"])
    logs = json.loads(Path(f"runs/cmml/embedded/both70/{run}/seed0/run.prov.json").read_text())["extra"]["train"]
    assert set(logs) == ({"task1"} if joint else {"task0", "task1"}) and all(v["steps"] > 0 for v in logs.values())
