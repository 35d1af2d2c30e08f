"""One source of truth: dvc.yaml is generated from the plan and must be current; the plan's
stages are consistent (unique names, every dep produced upstream or a source/data file)."""

from __future__ import annotations

from pathlib import Path

import yaml

from cmml.config import load_params
from cmml.pipeline.dvcgen import dvc_name, expected
from cmml.pipeline.plan import plan

ROOT = Path(__file__).resolve().parents[1]


def test_committed_dvc_yaml_is_up_to_date(monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    assert (ROOT / "dvc.yaml").read_text() == expected("params.yaml"), \
        "dvc.yaml is stale: run `cmml dvc-yaml`"


def test_plan_is_a_dag_in_topological_order_with_unique_names() -> None:
    stages = plan(load_params(ROOT / "params.yaml"))
    names = [s.name for s in stages]
    assert len(names) == len(set(names)) == len({dvc_name(s) for s in stages}) == len({s.rule_name for s in stages})
    produced: set[str] = set()
    for s in stages:
        for d in s.deps:
            assert d in produced or d.startswith("src/cmml/"), f"{s.name}: dep {d} not produced upstream"
            if d.startswith("src/cmml/"):
                assert (ROOT / d).is_file(), f"{s.name}: source dep {d} does not exist"
        produced.update(s.outs)


def test_task_chain_and_param_keys() -> None:
    params = load_params(ROOT / "params.yaml")
    stages = {s.name: s for s in plan(params)}
    t1 = stages["train/both70/finetune_head/seed0/task1"]
    assert "runs/embedded/both70/finetune_head/seed0/task0/ckpt" in t1.deps
    assert "methods.finetune_head" in t1.params and not any("finetune_full" in p for p in t1.params)
    assert "src/cmml/methods/finetune.py" in t1.deps
    joint = [n for n in stages if n.startswith("train/both70/joint/seed0/")]
    assert joint == [f"train/both70/joint/seed0/task{params['tasks']['num_tasks'] - 1}"]
    doc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    agg = doc["stages"]["aggregate"]
    assert agg["metrics"] == [{"results/metrics.json": {"cache": False}}]
