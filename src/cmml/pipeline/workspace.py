"""One run per workspace: a second ``snakemake`` or ``dvc repro`` refuses at once, whichever came first.

``.cmml/run.json`` names the run that owns the workspace: the tool, the pid of its process and
that process's start time (so a reused pid is not taken for it). A Snakemake run claims it while
its Snakefile is parsed (not for dry runs) and exports ``CMML_RUN_OWNER`` to its jobs; a stage
command started by DVC (``DVC_STAGE`` set) claims it for its parent ``dvc`` process, which lives
for the whole ``dvc repro``. A claim held by another live process is refused with a message that
names it; a claim of a process that has exited is stale and replaced. Reads and writes of the file
happen under an exclusive ``flock`` on ``.cmml/run.lock``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path

from cmml.errors import CmmlError

STATE = Path(".cmml/run.json")
LOCK = Path(".cmml/run.lock")
OWNER_ENV = "CMML_RUN_OWNER"


def _start_time(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/<pid>/stat), None when it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    (root / LOCK).parent.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _owner(root: Path) -> dict[str, object] | None:
    """The live owner recorded in the state file, or None."""
    try:
        rec = json.loads((root / STATE).read_text())
    except (OSError, ValueError):
        return None
    pid = rec.get("pid")
    if not isinstance(pid, int) or _start_time(pid) != rec.get("start"):
        return None
    return rec


def claim(tool: str, pid: int, root: Path = Path(".")) -> str:
    """Make ``pid`` (running ``tool``) the workspace's run; CmmlError if another live run owns it.

    Returns the owner token (``<pid>:<start time>``).
    """
    with _locked(root):
        owner = _owner(root)
        token = f"{pid}:{_start_time(pid)}"
        if owner is not None and owner.get("token") != token:
            raise CmmlError(f"another run owns this workspace: {owner['tool']} (pid {owner['pid']}) is running in "
                            f"{root.resolve()}; wait for it to finish (or stop it) and start again")
        (root / STATE).write_text(json.dumps({"tool": tool, "pid": pid, "start": _start_time(pid), "token": token}))
        return token


def release(token: str, root: Path = Path(".")) -> None:
    """Give the workspace up if ``token`` owns it."""
    with _locked(root):
        owner = _owner(root)
        if owner is not None and owner.get("token") == token:
            (root / STATE).unlink(missing_ok=True)


def dvc_process() -> int:
    """Pid of the nearest ancestor running dvc (the shell DVC starts a command in may sit between)."""
    pid = os.getppid()
    while pid > 1:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
        if any(Path(part.decode(errors="replace")).name == "dvc" or part == b"dvc" for part in cmdline[:3]):
            return pid
        pid = ppid
    return os.getppid()


def check_stage(root: Path = Path(".")) -> None:
    """Before a stage runs: under DVC claim the workspace for the ``dvc`` process; under Snakemake
    require its own claim; run by hand, require that no other run owns the workspace."""
    mine = os.environ.get(OWNER_ENV)
    if os.environ.get("DVC_STAGE"):
        claim("dvc repro", dvc_process(), root)
        return
    with _locked(root):
        owner = _owner(root)
    if owner is not None and owner.get("token") != mine:
        raise CmmlError(f"another run owns this workspace: {owner['tool']} (pid {owner['pid']}) is running in "
                        f"{root.resolve()}; wait for it to finish (or stop it) and start again")
