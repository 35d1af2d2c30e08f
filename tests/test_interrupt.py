"""Interrupted stages leave nothing half-written under a final name, and a rerun resumes.

A stage writes its outputs to temp paths only at the end (inside StageRun), so a stage killed
while computing leaves no trace; SIGTERM (what Snakemake and DVC send) exits cleanly with 143,
also when the stage runs in the warm worker (the client forwards the signal to it); temp
outputs left by a SIGKILL during the short commit window are removed by the next run.

The tests run the data/pretrain stage of a small project copy (``PYTHONPATH=<project>/src``),
and signal it once its first epoch is reported, i.e. in the middle of training.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from small import keep_families

ROOT = Path(__file__).resolve().parents[1]
BACKBONES = "runs/data/embedded/backbone"
STAGE = "data/pretrain/seed0"


def make_project(root: Path, epochs: int) -> dict[str, Any]:
    """A project copy whose pretrain stage takes far longer than the test waits (50 epochs)."""
    shutil.copytree(ROOT / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    keep_families(p)  # the cmml family only
    p["benchmark"].update(num_classes=8, per_class={"pretrain": 60, "train": 4, "val": 1, "test": 4})
    p["tasks"]["num_tasks"] = 2
    p["pretrain"]["epochs"] = epochs
    p["runtime"].update(device="cpu", threads=1)
    p["settings"] = {"both70": p["settings"]["both70"]}
    p["cmml"]["methods"] = {"finetune_head": {**p["cmml"]["methods"]["finetune_head"], "epochs": 1}}
    p["cmml"]["experiments"] = {"main": {"methods": ["finetune_head"], "settings": ["both70"], "seeds": [0]}}
    (root / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    for stage in ("data/prepare", "data/tasks"):
        subprocess.run([sys.executable, "-m", "cmml", "run", stage], cwd=root, check=True, capture_output=True,
                       env=env(root, worker=False))
    return p


def env(root: Path, worker: bool) -> dict[str, str]:
    full = {**os.environ, "PYTHONPATH": str(root / "src"), "CMML_WORKER": "1" if worker else "0", "PYTHONUNBUFFERED": "1"}
    full.pop("CMML_IN_WORKER", None)
    return full


def children(pid: int) -> list[int]:
    """Pids of the live processes whose parent is ``pid``."""
    out = []
    for d in Path("/proc").iterdir():
        try:
            stat = (d / "stat").read_text() if d.name.isdigit() else ""
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if fields and fields[0] != "Z" and int(fields[1]) == pid:
            out.append(int(d.name))
    return out


def start_and_interrupt(root: Path, worker: bool, server: int | None = None) -> int:
    """Start the pretrain stage, SIGTERM its command once the first epoch is reported; its exit status.

    With ``server``, the stage must be running in a child of that worker when the signal is sent."""
    proc = subprocess.Popen([sys.executable, "-m", "cmml", "run", STAGE], cwd=root, env=env(root, worker),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:  # imports done, training under way (50 epochs take far longer)
            seen.append(line)
            if f"{STAGE}: epoch 1/50" in line:
                break
        assert seen and f"{STAGE}: epoch 1/50" in seen[-1] and proc.poll() is None, "".join(seen)
        if server is not None:
            assert len(children(server)) == 1, "the stage does not run in the worker"
        proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def assert_no_trace(root: Path) -> None:
    bb = root / BACKBONES
    assert not (bb / "seed0").exists() and not (bb / "seed0.prov.json").exists()
    assert not list(bb.glob(".seed0*"))


def test_interrupted_stage_leaves_nothing_and_rerun_resumes(tmp_path: Path) -> None:
    root = tmp_path / "p"
    p = make_project(root, epochs=50)
    assert start_and_interrupt(root, worker=False) == 128 + signal.SIGTERM
    assert_no_trace(root)

    bb = root / BACKBONES
    stale = bb / ".seed0.abc123.tmp"  # what a SIGKILL inside the commit window leaves
    (stale / "sub").mkdir(parents=True)
    (stale / "sub/model.safetensors").write_bytes(b"half")
    p["pretrain"]["epochs"] = 1
    (root / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    subprocess.run([sys.executable, "-m", "cmml", "run", STAGE], cwd=root, check=True, capture_output=True,
                   env=env(root, worker=False))
    assert (bb / "seed0.prov.json").is_file() and (bb / "seed0/model.safetensors").is_file()
    assert not (bb / "seed0/prov.json").exists() and not stale.exists()


def test_sigterm_reaches_a_stage_running_in_the_worker(tmp_path: Path) -> None:
    root = tmp_path / "p"
    make_project(root, epochs=50)
    sock = Path(subprocess.run([sys.executable, "-c", "from cmml.pipeline.worker import socket_path; print(socket_path())"],
                               cwd=root, env=env(root, worker=False), capture_output=True, text=True, check=True).stdout.strip())
    server = subprocess.Popen([sys.executable, "-m", "cmml", "worker", "--socket", str(sock), "--idle", "60"], cwd=root,
                              env=env(root, worker=False), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not sock.exists() and server.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert sock.exists(), "worker did not start"
        # the client forwards the signal to the worker's child and exits with its status
        assert start_and_interrupt(root, worker=True, server=server.pid) == 128 + signal.SIGTERM
        assert_no_trace(root)
        deadline = time.time() + 30
        while children(server.pid) and time.time() < deadline:  # the child exits right after reporting
            time.sleep(0.1)
        assert server.poll() is None and not children(server.pid)  # the worker itself keeps serving
    finally:
        if server.poll() is None:
            server.terminate()
        server.wait(timeout=30)
