"""The warm worker: `cmml run` commands delegated to it behave like direct runs (exit code, stderr,
cwd, env, outputs; the sidecar says which), a client falls back to running the stage itself when
no worker is up or the worker refuses (source files changed), a model stage run directly starts
the worker that serves the next ones, and the worker module imports nothing of cmml.

Every test works in a project copy (``src/`` copied, ``PYTHONPATH=<project>/src``), so the
worker's sources are the copy's and edits elsewhere cannot make it refuse.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import small
from cmml.provenance.hashing import hash_tree

ROOT = Path(__file__).resolve().parents[1]
BENCH = "runs/data/embedded"
BAD = "cmml/run/both70/nosuch/seed0"
IN_WORKER = "CMML_IN_WORKER"


def small_params() -> dict[str, Any]:
    return small.small_params(8, {"pretrain": 12, "train": 4, "val": 1, "test": 4}, runs={"finetune_head": {"epochs": 1}},
                        seeds=(0, 1))


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "p"
    shutil.copytree(ROOT / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (root / "params.yaml").write_text(yaml.safe_dump(small_params(), sort_keys=False))
    return root


def run_cmml(project: Path, *args: str, worker: bool = True, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": str(project / "src"), "CMML_WORKER": "1" if worker else "0", **env}
    full.pop(IN_WORKER, None)
    return subprocess.run([sys.executable, "-m", "cmml", *args], cwd=project, capture_output=True, text=True, env=full)


def socket_of(project: Path) -> Path:
    """The socket the project's clients connect to (computed by the project's own package)."""
    env = {**os.environ, "PYTHONPATH": str(project / "src")}
    out = subprocess.run([sys.executable, "-c", "from cmml.pipeline.worker import socket_path; print(socket_path())"],
                         cwd=project, capture_output=True, text=True, env=env, check=True).stdout
    return Path(out.strip())


def wait_for(cond: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while not cond():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@contextlib.contextmanager
def worker(project: Path, idle: float = 60.0) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """`cmml worker` for the project, started as the CLI's spawn() starts it; stopped afterwards."""
    sock = socket_of(project)
    server = subprocess.Popen([sys.executable, "-m", "cmml", "worker", "--socket", str(sock), "--idle", str(idle)],
                              cwd=project, env={**os.environ, "PYTHONPATH": str(project / "src"), "CMML_WORKER": "0"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: sock.exists() or server.poll() is not None, "the worker's socket")
        assert server.poll() is None, "the worker exited at start"
        yield server, sock
    finally:
        if server.poll() is None:
            server.terminate()
        server.wait(timeout=30)


def sidecar(project: Path, rel: str) -> dict[str, Any]:
    return json.loads((project / f"{rel}.prov.json").read_text())


def workers_serving(sock: Path) -> list[int]:
    """Pids of the `cmml worker` processes serving ``sock`` (started by this test)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):
                argv = (d / "cmdline").read_bytes().split(b"\0")
                if b"worker" in argv and str(sock).encode() in argv:
                    pids.append(int(d.name))
    return pids


def model_files(project: Path, seed: int) -> dict[str, Any]:
    """Hashes of a backbone's files, and its training log without the timings (wall_s, samples_per_s)."""
    d = Path(f"{BENCH}/backbone/seed{seed}")
    log = json.loads((project / d / "pretrain_log.json").read_text())
    files = {k: v for k, v in hash_tree([d], project).items() if not k.endswith("/pretrain_log.json")}
    assert f"{d}/model.safetensors" in files
    return {**files, "log": {k: v for k, v in log.items() if k not in ("wall_s", "samples_per_s")}}


def test_worker_module_imports_nothing_of_cmml() -> None:
    code = "import sys, cmml.pipeline.worker; print(sorted(m for m in sys.modules if m.split('.')[0] == 'cmml'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(["cmml", "cmml.pipeline", "cmml.pipeline.worker"])


def git_commit(project: Path) -> str:
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], cwd=project, check=True)
    subprocess.run([*git, "add", "src", "params.yaml"], cwd=project, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=project, check=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True, check=True).stdout.strip()


def test_delegated_stage_behaves_like_a_direct_run(project: Path) -> None:
    head = git_commit(project)
    prepared = f"{BENCH}/prepared"
    with worker(project) as (server, sock):
        # a failing command: same exit code and stderr either way
        via_worker, direct = run_cmml(project, "run", BAD), run_cmml(project, "run", BAD, worker=False)
        assert via_worker.returncode == direct.returncode == 2
        assert via_worker.stderr == direct.stderr and f"no stage named {BAD!r}" in via_worker.stderr
        assert not (project / BENCH).exists()
        # a stage that succeeds: written in the client's directory, recorded as run in the worker
        proc = run_cmml(project, "run", "data/prepare")
        assert proc.returncode == 0, proc.stderr
        rec = sidecar(project, prepared)
        assert rec["env"]["via_worker"] is True and rec["code"]["commit"] == head
        outputs = hash_tree([Path(prepared)], project)
        # the client's environment reaches the stage: git, which the sidecar asks for the commit, sees
        # the client's GIT_DIR (the worker's own environment has none)
        proc = run_cmml(project, "run", "data/prepare", GIT_DIR=str(project / "no-such-repo"))
        assert proc.returncode == 0, proc.stderr
        rec = sidecar(project, prepared)
        assert rec["env"]["via_worker"] is True and rec["code"]["commit"] is None
        proc = run_cmml(project, "run", "data/prepare", worker=False)
        assert proc.returncode == 0, proc.stderr
        rec = sidecar(project, prepared)
        assert rec["env"]["via_worker"] is False and rec["code"]["commit"] == head
        assert hash_tree([Path(prepared)], project) == outputs  # the same bytes either way
        assert server.poll() is None
        # a source file of the worker's package changed: it refuses and exits, the client runs the stage itself
        src = project / "src/cmml/data/tasks.py"
        st = src.stat()
        os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        proc = run_cmml(project, "run", "data/tasks")
        assert proc.returncode == 0, proc.stderr
        assert sidecar(project, f"{BENCH}/tasks")["env"]["via_worker"] is False
        assert server.wait(timeout=30) == 0 and not sock.exists()


def stop_workers(sock: Path) -> None:
    """Stop every worker serving ``sock`` and wait until they are gone."""
    for pid in workers_serving(sock):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not workers_serving(sock), "the spawned worker to stop", timeout=30)


def test_without_worker_the_client_runs_the_stage_itself(project: Path) -> None:
    sock = socket_of(project)
    assert not sock.exists()
    proc = run_cmml(project, "run", BAD)  # the worker is enabled, but none listens
    assert proc.returncode == 2 and f"no stage named {BAD!r}" in proc.stderr
    assert not sock.exists() and not workers_serving(sock)  # a refused command starts no worker
    try:
        proc = run_cmml(project, "run", "data/prepare")
        assert proc.returncode == 0, proc.stderr
        assert sidecar(project, f"{BENCH}/prepared")["env"]["via_worker"] is False
        wait_for(sock.exists, "the worker a direct stage starts for the next ones")
    finally:
        stop_workers(sock)


def test_a_direct_model_stage_starts_the_worker_that_serves_the_next(project: Path) -> None:
    for name in ("data/prepare", "data/tasks"):
        assert run_cmml(project, "run", name, worker=False).returncode == 0
    sock = socket_of(project)
    try:
        proc = run_cmml(project, "run", "data/pretrain/seed0")
        assert proc.returncode == 0, proc.stderr
        assert sidecar(project, f"{BENCH}/backbone/seed0")["env"]["via_worker"] is False
        wait_for(sock.exists, "the spawned worker's socket")
        assert len(workers_serving(sock)) == 1
        direct = model_files(project, 0)
        for seed in (1, 0):
            proc = run_cmml(project, "run", f"data/pretrain/seed{seed}")
            assert proc.returncode == 0, proc.stderr
            assert f"data/pretrain/seed{seed}: epoch 1/1" in proc.stderr  # the stage's stderr reaches the client
            assert sidecar(project, f"{BENCH}/backbone/seed{seed}")["env"]["via_worker"] is True
        assert model_files(project, 0) == direct  # the same model either way
        assert len(workers_serving(sock)) == 1  # a model stage in the worker starts no second one
    finally:
        stop_workers(sock)


def test_a_worker_that_goes_away_mid_handshake_leaves_the_stage_to_the_client(tmp_path: Path, monkeypatch) -> None:
    """A worker exits when its sources change; a client it had not yet accepted sees a reset connection
    and must run the stage itself (delegate returns None) instead of failing."""
    import socket
    import threading

    from cmml.pipeline import worker

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.delenv("CMML_WORKER", raising=False)
    monkeypatch.delenv(worker.IN_WORKER, raising=False)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(worker.socket_path()))
    srv.listen(1)

    def reset_first_client() -> None:
        conn, _ = srv.accept()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST on close
        conn.close()

    t = threading.Thread(target=reset_first_client)
    t.start()
    try:
        assert worker.delegate(["run", "data/tasks"]) is None
    finally:
        t.join(timeout=10)
        srv.close()
