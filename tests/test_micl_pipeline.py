"""A tiny two-task run (image captioning then image QA) of every micl method through the stage CLI:
prepare, pretrain, the run (step 0, step 1 from step 0, then the evaluation), aggregate, report; and a
step killed mid-way that resumes."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from small import kill_after_epoch, small_params
from cmml.cli import main
from cmml.families.micl.methods.registry import METHODS
from cmml.pipeline.plan import plan

ROOT = Path(__file__).resolve().parents[1]
RUNS = {"finetune": "finetune", "joint": "joint", "moincl": "moincl", "moincl_released": "moincl", "lwf": "lwf",
        "replay": "replay", "ewc": "ewc"}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("micl")
    p = small_params(8, {"pretrain": 8, "train": 6, "val": 1, "test": 4}, runs={"finetune_head": {"epochs": 1}})
    p["micl"] = m = yaml.safe_load((ROOT / "params.yaml").read_text())["micl"]
    m["data"].update(train=8, test=4, pretrain_items=30, lm_captions=20, instructions=20)
    m["encoders"]["epochs"] = m["lm"]["epochs"] = 1
    m["generation"].update(num_beams=2, max_new_tokens=4)
    m["orders"] = {"o": ["image_cap", "image_qa"]}
    m["methods"]["moincl"].update(alpha_fusion=[1.0, 0.5], pseudo_num=[0, 2], lambda_kl=[0.0, 1.0])
    for run in RUNS:
        if "method" in m["methods"][run]:
            m["methods"][run]["epochs"] = 1
    m["methods"] = {r: m["methods"][r] for r in RUNS}
    m["experiments"] = {"t": {"methods": list(RUNS), "orders": ["o"], "seeds": [0]}}
    (root / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    return root


def test_every_method_registered_here() -> None:
    assert set(RUNS.values()) == set(METHODS)


def test_every_method_through_the_stage_cli(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project)
    monkeypatch.setenv("CMML_WORKER", "0")
    params = yaml.safe_load(Path("params.yaml").read_text())
    stages = [s for s in plan(params) if s.name.startswith("micl/") or s.name == "code"]
    for s in stages:
        assert main(["run", s.name]) == 0, s.name
    for run, method in RUNS.items():
        scores = json.loads(Path(f"runs/micl/o/{run}/seed0/eval/scores.json").read_text())
        assert set(scores["rows"]) == ({"task1"} if method == "joint" else {"task0", "task1"})
        last = scores["rows"]["task1"]
        assert last["cider_single"][1] is None and last["vqa_acc"][0] is None
        assert all(0 <= v <= 1000 for v in (last["cider_single"][0], last["cider_all"][0], last["vqa_acc"][1]))
        if method != "joint":
            assert scores["rows"]["task0"]["vqa_acc"] == [None, None]  # step 0 sees only task 0
    side = json.loads(Path("runs/micl/o/moincl/seed0/run.prov.json").read_text())["extra"]
    assert side["scores"] == json.loads(Path("runs/micl/o/moincl/seed0/eval/scores.json").read_text())
    log = side["train"]["task1"]
    assert log["ptgm_mode"] == "caption" and log["pseudo_samples"] > 0 and "ikd_kl" in log["loss_per_epoch"]
    metrics = json.loads(Path("results/micl/metrics.json").read_text())
    assert set(metrics) == {f"o/{r}" for r in RUNS}
    assert all(math.isfinite(metrics[f"o/{r}"]["AP"]["mean"]) for r in RUNS)
    assert Path("results/micl/report/index.html").is_file()
    # resumable: a second run of a done stage rewrites the same checkpoint and score bytes (seeded)
    ck, sc = Path("runs/micl/o/lwf/seed0/ckpt/task1/ckpt.pt"), Path("runs/micl/o/lwf/seed0/eval/scores.json")
    before = ck.read_bytes(), sc.read_bytes()
    assert main(["run", "micl/run/o/lwf/seed0"]) == 0
    assert (ck.read_bytes(), sc.read_bytes()) == before


def test_snakemake_sees_the_micl_stages_done(project: Path) -> None:
    """The same plan drives Snakemake: after the stage CLI ran every micl stage, a dry run schedules exactly
    what is downstream of the outputs the CLI test rewrote last (lwf's run stage)."""
    import os
    import shutil
    import subprocess
    import sys

    if not (project / "results/micl/report/index.html").is_file():
        pytest.skip("needs test_every_method_through_the_stage_cli first")
    for item in ("Snakefile", "workflow", "src"):  # copies keep their modification times (older than the outputs)
        src = ROOT / item
        if src.is_dir():
            shutil.copytree(src, project / item, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, project / item)
    env = {**os.environ, "PYTHONPATH": str(project / "src"), "CMML_WORKER": "0",
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    out = subprocess.run(["snakemake", "-n", "--cores", "1"], cwd=project, capture_output=True, text=True, env=env)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    scheduled = set(re.findall(r"^rule (\w+):", out.stdout, re.M))
    micl = {r for r in scheduled if r.startswith("micl_")}
    assert micl == {"micl_aggregate", "micl_report"}, sorted(micl)
    assert "index" in scheduled  # not run by the test: Snakemake plans the whole DAG, micl included


def test_pretrained_lm_is_a_tracked_input_and_needs_a_path(tmp_path: Path) -> None:
    from cmml.errors import ConfigError
    from cmml.families.micl.plan import validate

    p = small_params(8, {"pretrain": 8, "train": 6, "val": 1, "test": 4}, runs={"finetune_head": {"epochs": 1}})
    p["micl"] = yaml.safe_load((ROOT / "params.yaml").read_text())["micl"]
    p["micl"]["lm"].update(source="pretrained", path="")
    with pytest.raises(ConfigError, match="micl.lm.path"):
        validate(p, "params.yaml")
    p["micl"]["lm"]["path"] = "models/my-lm"
    pre = [s for s in plan(p) if s.name.startswith("micl/pretrain/")]
    assert pre and all("models/my-lm" in s.deps for s in pre)


def test_kill_9_mid_step_resumes_to_the_same_checkpoint(project: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A MoInCL step killed with SIGKILL after a few epochs resumes from the state kept outside its
    outputs (model, optimizer, schedule, generators, pseudo-sample count) and writes the checkpoint
    an uninterrupted run writes."""
    root = tmp_path / "p"
    root.mkdir()
    shutil.copy(project / "params.yaml", root / "params.yaml")
    monkeypatch.chdir(root)
    monkeypatch.setenv("CMML_WORKER", "0")
    p = yaml.safe_load(Path("params.yaml").read_text())
    p["micl"]["methods"]["moincl"]["epochs"] = 30
    Path("params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    name, cks = "micl/run/o/moincl/seed0", [Path(f"runs/micl/o/moincl/seed0/ckpt/task{t}/ckpt.pt") for t in range(2)]
    for s in plan(p):
        if s.name.startswith(("code", "micl/prepare", "micl/pretrain/seed0")):
            assert main(["run", s.name]) == 0, s.name
    cmd, env = [sys.executable, "-m", "cmml", "run", name], {**os.environ, "CMML_WORKER": "0"}
    saved = kill_after_epoch(cmd, env, 2, task=1)
    resume_dir = Path(".cmml/resume")
    assert 2 <= saved["epoch"] < 29 and not any(ck.exists() for ck in cks)
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"{name}: task 0 was finished by an earlier run; kept" in rerun.stderr
    assert f"{name} step 1: resuming after epoch {saved['epoch'] + 1}/30" in rerun.stderr
    assert not any(resume_dir.iterdir()), "the resume state must be removed once the outputs are committed"
    resumed = [torch.load(ck, weights_only=True) for ck in cks]
    for ck in cks:
        shutil.rmtree(ck.parent)
    assert main(["run", name]) == 0
    for r, ck in zip(resumed, cks):
        fresh = torch.load(ck, weights_only=True)
        assert r["extra"] == fresh["extra"] and r["trainable"].keys() == fresh["trainable"].keys()
        assert all(torch.equal(r["trainable"][k], fresh["trainable"][k]) for k in fresh["trainable"])
