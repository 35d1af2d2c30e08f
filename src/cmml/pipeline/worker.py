"""A warm pre-forking worker that removes the ~4 s import cost of model stages.

Importing torch + transformers' ViLT costs ~4 s per process; with hundreds of small train and
evaluate stages that dominates a run. The first model stage started in a project spawns
``cmml worker`` in the background (and runs itself directly); the worker imports the heavy
modules once and listens on a Unix socket. Later stage commands — still launched as separate
commands by Snakemake or DVC, with the same argv — connect, hand over their stdin/stdout/stderr,
working directory and environment, and the worker forks a child that runs the stage exactly as
``python -m cmml`` would, returning its exit code. Signals sent to the client are forwarded to
the child.

Safety: the worker refuses (and exits) when any source file of the imported cmml package
changed since it started, or when the client runs another interpreter or another copy of cmml;
the client then runs the stage itself. It exits after ``idle`` seconds without requests.
``CMML_WORKER=0`` disables it. Results are identical either way (stages seed everything they use).

This module imports nothing of cmml: the CLI hands :func:`serve` the entry point to run in the
children and the modules to preload, and :func:`delegate` the decision whether a command is heavy.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

IDLE_S = 120.0
IN_WORKER = "CMML_IN_WORKER"  # set to "1" in the worker's children (recorded in sidecars)


def _package_dir() -> Path:
    return Path(__file__).resolve().parents[1]


def socket_path(cwd: str | None = None) -> Path:
    """Per-project, per-interpreter socket path (short: Unix socket paths are limited to ~100 bytes)."""
    key = f"{os.path.realpath(cwd or os.getcwd())}|{sys.executable}|{_package_dir()}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path(os.environ.get("TMPDIR", "/tmp")) / f"cmml-worker-{os.getuid()}-{digest}.sock"


def _identity() -> dict[str, str]:
    return {"python": sys.executable, "package": str(_package_dir())}


def sources_state() -> dict[str, int]:
    """Modification time (ns) of every source file of the imported cmml package."""
    return {str(p): p.stat().st_mtime_ns for p in sorted(_package_dir().rglob("*.py"))}


# ---- client ----------------------------------------------------------------------------
def enabled() -> bool:
    """Whether this process may use a worker (not inside one, not a rank torchrun started, not ``CMML_WORKER=0``)."""
    return (os.environ.get(IN_WORKER) != "1" and os.environ.get("CMML_WORKER", "1") != "0"
            and "LOCAL_RANK" not in os.environ)


def delegate(argv: list[str]) -> int | None:
    """Run ``argv`` in this project's warm worker; None when disabled, none is listening, or it refused."""
    if not enabled():
        return None
    path = socket_path()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        return None
    with sock:
        request = {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), **_identity()}
        try:
            socket.send_fds(sock, [json.dumps(request).encode() + b"\n"], [0, 1, 2])
            reader = sock.makefile("r")
            first = json.loads(reader.readline() or "{}")
        except (OSError, ValueError):
            return None  # the worker exited before taking the stage (e.g. its sources changed): run directly
        if "pid" not in first:
            return None  # refused (stale code, other interpreter): run directly
        child = int(first["pid"])
        forward = lambda signum, _frame: os.kill(child, signum)  # noqa: E731
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, forward)
        try:
            line = reader.readline()
        except OSError:
            line = ""
        if not line:
            print("cmml: the worker's child process died without an exit status", file=sys.stderr)
            return 1
        return int(json.loads(line)["exit"])


def spawn() -> None:
    """Start a detached worker for this project if enabled (at most one: it holds a lock)."""
    if enabled():
        _spawn(socket_path())


def _spawn(path: Path) -> None:
    """Start a detached worker serving ``path``."""
    with contextlib.suppress(OSError):
        subprocess.Popen([sys.executable, "-m", "cmml", "worker", "--socket", str(path)],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True, env={**os.environ, "CMML_WORKER": "0"})


# ---- server ----------------------------------------------------------------------------
def serve(path: Path, entry: Callable[[list[str]], int], preload: Callable[[], None], idle: float = IDLE_S) -> int:
    """Accept stage requests until idle for ``idle`` seconds or the sources change.

    ``preload`` imports what model stages import (it must not touch CUDA or run a torch op);
    each child runs ``entry(argv)``.
    """
    lock = open(f"{path}.lock", "w")  # noqa: SIM115 - held for the worker's lifetime
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return 0  # another worker serves this project
    preload()
    state, ident = sources_state(), _identity()
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(16)
    srv.settimeout(idle)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped automatically
    try:
        while True:
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                return 0
            msg, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
            request = json.loads(msg.decode())
            if sources_state() != state or {k: request.get(k) for k in ident} != ident or len(fds) != 3:
                conn.sendall(b'{"refused": "stale"}\n')
                conn.close()
                for fd in fds:
                    os.close(fd)
                if sources_state() != state:
                    return 0
                continue
            if os.fork() == 0:
                srv.close()
                _child(conn, fds, request, entry)
            conn.close()
            for fd in fds:
                os.close(fd)
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        with contextlib.suppress(FileNotFoundError):
            Path(f"{path}.lock").unlink()  # still held: a new worker creates a fresh lock file


def _child(conn: socket.socket, fds: list[int], request: dict[str, Any], entry: Callable[[list[str]], int]) -> None:
    """Become the stage process: client's stdio, cwd, env and argv; report the exit code."""
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        os.environ[IN_WORKER] = "1"
        sys.argv = [sys.argv[0], *request["argv"]]
        conn.sendall(json.dumps({"pid": os.getpid()}).encode() + b"\n")
        code = entry(request["argv"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - report any crash as a failed stage
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps({"exit": code}).encode() + b"\n")
        os._exit(code)
