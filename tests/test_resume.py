"""A train stage killed with SIGKILL in the middle of its epochs resumes from its last epoch
(state kept outside the declared outputs) and ends with the checkpoint an uninterrupted run writes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from small import kill_after_epoch, small_params
from cmml.cli import main
from cmml.pipeline.plan import plan

STAGE = "cmml/train/both70/finetune_full/seed0/task0"
CKPT = Path("runs/cmml/embedded/both70/finetune_full/seed0/task0/ckpt/checkpoint.pt")


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    p = small_params(4, {"pretrain": 4, "train": 40, "val": 1, "test": 2},
                     runs={"finetune_full": {"epochs": 60, "batch_size": 8}})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CMML_WORKER", "0")
    Path("params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    for st in plan(p):
        if st.name.startswith(("code/", "data/")):
            assert main(["run", st.name]) == 0, st.name
    return tmp_path


def stage_cmd() -> list[str]:
    return [sys.executable, "-m", "cmml", "run", STAGE]


def test_kill_9_mid_task_resumes_to_the_same_checkpoint(project: Path) -> None:
    env = {**os.environ, "CMML_WORKER": "0"}
    saved = kill_after_epoch(stage_cmd(), env, 3)
    resume_dir = Path(".cmml/resume")
    assert 3 <= saved["epoch"] < 59 and not CKPT.exists()
    rerun = subprocess.run(stage_cmd(), env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"resuming after epoch {saved['epoch'] + 1}/60" in rerun.stderr
    assert not list(resume_dir.glob("*.pt")), "the resume state must be removed once the outputs are committed"
    resumed = torch.load(CKPT, weights_only=True)["state"]
    side = json.loads(Path(f"{CKPT.parent}.prov.json").read_text())
    assert side["extra"]["train"]["resumed_after_epoch"] == saved["epoch"] + 1
    shutil.rmtree(CKPT.parent)
    fresh = subprocess.run(stage_cmd(), env=env, capture_output=True, text=True)
    assert fresh.returncode == 0 and "resuming" not in fresh.stderr
    uninterrupted = torch.load(CKPT, weights_only=True)["state"]
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)
