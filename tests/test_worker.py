"""The warm worker: stage commands delegated to it behave like direct runs (exit code, stderr,
cwd, env), and a client falls back to running the stage itself when no worker is up."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from cmml.pipeline.worker import socket_path

ROOT = Path(__file__).resolve().parents[1]


def run_cmml(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cmml", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **env})


def test_delegated_stage_reports_exit_code_and_stderr(tmp_path: Path) -> None:
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    sock = socket_path(str(tmp_path))
    server = subprocess.Popen([sys.executable, "-m", "cmml", "worker", "--socket", str(sock), "--idle", "30"],
                              cwd=tmp_path, env={**os.environ, "CMML_WORKER": "0"})
    try:
        deadline = time.time() + 60
        while not sock.exists() and time.time() < deadline:
            time.sleep(0.2)
        assert sock.exists(), "worker did not start"
        bad = ["train", "--method", "nosuch", "--setting", "both70", "--seed", "0", "--task", "0"]
        via_worker = run_cmml(bad, tmp_path)
        direct = run_cmml(bad, tmp_path, CMML_WORKER="0")
        assert via_worker.returncode == direct.returncode == 2
        assert via_worker.stderr == direct.stderr and "no stage named 'train/both70/nosuch/seed0/task0'" in via_worker.stderr
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_without_worker_the_client_runs_the_stage_itself(tmp_path: Path) -> None:
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    proc = run_cmml(["evaluate", "--method", "nosuch", "--setting", "both70", "--seed", "0", "--task", "0"], tmp_path,
                    CMML_WORKER="0")
    assert proc.returncode == 2 and "no stage named" in proc.stderr
