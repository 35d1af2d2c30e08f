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

STAGE = "cmml/run/both70/finetune_full/seed0"
RUN = Path("runs/cmml/embedded/both70/finetune_full/seed0")
CKPTS = [RUN / f"ckpt/task{t}/checkpoint.pt" for t in range(2)]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    p = small_params(4, {"pretrain": 4, "train": 40, "val": 1, "test": 2},
                     runs={"finetune_full": {"epochs": 30, "batch_size": 8}})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CMML_WORKER", "0")
    Path("params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    for st in plan(p):
        if st.name.startswith(("code", "data/")):
            assert main(["run", st.name]) == 0, st.name
    return tmp_path


def stage_cmd() -> list[str]:
    return [sys.executable, "-m", "cmml", "run", STAGE]


def states() -> list[dict[str, torch.Tensor]]:
    return [torch.load(c, weights_only=True)["state"] for c in CKPTS]


def test_kill_9_mid_task_resumes_to_the_same_checkpoints(project: Path) -> None:
    """Killed in task 1's epochs: the rerun keeps task 0 (finished before the kill), resumes task 1 after its
    last saved epoch and writes both checkpoints as an uninterrupted run does."""
    env = {**os.environ, "CMML_WORKER": "0"}
    saved = kill_after_epoch(stage_cmd(), env, 3, task=1)
    resume_dir = Path(".cmml/resume")
    assert 3 <= saved["epoch"] < 29 and not any(c.exists() for c in CKPTS)
    rerun = subprocess.run(stage_cmd(), env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"{STAGE}: task 0 was finished by an earlier run; kept" in rerun.stderr
    assert f"{STAGE} task 1: resuming after epoch {saved['epoch'] + 1}/30" in rerun.stderr
    assert "task 0: epoch" not in rerun.stderr
    assert not any(resume_dir.iterdir()), "the resume state must be removed once the outputs are committed"
    resumed = states()
    side = json.loads((RUN / "run.prov.json").read_text())
    assert side["extra"]["train"]["task1"]["resumed_after_epoch"] == saved["epoch"] + 1
    for t in range(2):
        shutil.rmtree(CKPTS[t].parent)
    fresh = subprocess.run(stage_cmd(), env=env, capture_output=True, text=True)
    assert fresh.returncode == 0 and "resuming" not in fresh.stderr and "kept" not in fresh.stderr
    for a, b in zip(resumed, states()):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
