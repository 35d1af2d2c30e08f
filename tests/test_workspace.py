"""One run per workspace: while Snakemake runs, `dvc repro` refuses at once (and the reverse);
the first run finishes intact. Claims of exited processes are stale and replaced."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from small import small_params
from cmml.errors import CmmlError
from cmml.pipeline.workspace import STATE, claim, release

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.e2e


def test_claims_of_live_and_exited_processes(tmp_path: Path) -> None:
    other = subprocess.Popen(["sleep", "30"])
    try:
        token = claim("dvc repro", other.pid, tmp_path)
        with pytest.raises(CmmlError, match=f"dvc repro \\(pid {other.pid}\\) is running"):
            claim("snakemake", os.getpid(), tmp_path)
        release("not-the-owner", tmp_path)
        assert (tmp_path / STATE).is_file()
        release(token, tmp_path)
        assert not (tmp_path / STATE).exists()
        claim("dvc repro", other.pid, tmp_path)
    finally:
        other.kill()
        other.wait()
    claim("snakemake", os.getpid(), tmp_path)  # the owner exited: its claim is stale


def env(root: Path) -> dict[str, str]:
    return {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(root), "PYTHONPATH": str(root / "src"), "DVC_NO_ANALYTICS": "1",
            "CMML_WORKER": "0", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@t"}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    for item in ("Snakefile", "workflow", "src", ".dvcignore"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, tmp_path / item, **(
            {"ignore": shutil.ignore_patterns("__pycache__", "*.egg-info")} if src.is_dir() else {}))
    p = small_params(4, {"pretrain": 2, "train": 30, "val": 1, "test": 2},
                     runs={"finetune_full": {"epochs": 15, "batch_size": 4}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["cmml", "dvc-yaml"], ["git", "add", "-A"],
                ["git", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=tmp_path, env=env(tmp_path), check=True, capture_output=True)
    return tmp_path


def wait_for_train(root: Path, first: subprocess.Popen) -> None:
    deadline = time.time() + 180
    while time.time() < deadline and first.poll() is None:
        if list((root / ".cmml/resume").glob("*.pt")):
            return
        time.sleep(0.1)
    raise AssertionError(f"the first run never reached its train stage (exit {first.poll()})")


# The first run goes up to the train stage (whose epochs the second run interrupts); its output is the run's checkpoint directory.
CKPT = "runs/cmml/embedded/both70/finetune_full/seed0/ckpt"
DVC_STAGE = "pipelines/cmml/both70/finetune_full/seed0/dvc.yaml:cmml-run-both70-finetune_full-seed0"


@pytest.mark.parametrize("first_cmd, second_cmd, holder", [
    (["snakemake", "--cores", "1", CKPT], ["dvc", "repro"], "snakemake"),
    (["dvc", "repro", DVC_STAGE], ["snakemake", "--cores", "1"], "dvc repro"),
])
def test_second_run_refuses_and_the_first_completes(project: Path, first_cmd: list[str], second_cmd: list[str],
                                                     holder: str) -> None:
    first = subprocess.Popen(first_cmd, cwd=project, env=env(project), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    try:
        wait_for_train(project, first)
        t0 = time.time()
        second = subprocess.run(second_cmd, cwd=project, env=env(project), capture_output=True, text=True)
        assert second.returncode != 0 and f"another run owns this workspace: {holder}" in second.stdout + second.stderr
        assert time.time() - t0 < 60
        out, _ = first.communicate(timeout=600)
        assert first.returncode == 0, out[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
    audit = subprocess.run(["cmml", "audit", f"{CKPT}/task0/checkpoint.pt"], cwd=project, env=env(project), capture_output=True, text=True)
    assert audit.returncode == 0, audit.stdout[-2000:] + audit.stderr
