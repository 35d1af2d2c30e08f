"""Writing a stage's provenance sidecar and committing its outputs atomically.

Every stage body runs inside :class:`StageRun`: it writes into temporary outputs, then the
runner renames them into place and writes the sidecar last, so a sidecar exists only for a
complete output set. The sidecar records the stage, command, resolved params subset and hash,
sha256/md5 of every input and output file, code version (git commit, dirty flag, sha256 of the
source files the stage runs), package versions, device, seed and wall time.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from cmml.config import params_hash
from cmml.pipeline.atomic import publish_mode, write_json
from cmml.provenance.hashing import file_fingerprint, hash_file, hash_tree

SCHEMA = 1
FINGERPRINT_CACHE = ".cmml/fingerprints"  # content-addressed AST fingerprints of source files (see hashing.file_fingerprint)
_stage_started: float | None = None
_dispatch_modules: frozenset[str] = frozenset()


def mark_stage_start() -> None:
    """Record when the stage command started, so sidecars report the whole stage's wall time."""
    global _stage_started
    _stage_started = time.time()


def mark_dispatch_done() -> None:
    """Record the modules loaded to find the stage; sidecars list the cmml modules loaded after (the handler's)."""
    global _dispatch_modules
    _dispatch_modules = frozenset(sys.modules)


PACKAGES = ("cmml", "torch", "transformers", "tokenizers", "numpy", "pandas", "pyarrow", "torchmetrics", "snakemake", "dvc")


def git_state(root: Path) -> dict[str, Any]:
    """Commit and dirty flag of the repository at ``root`` (None where git or a repo is absent).

    Dirty means tracked *code or configuration* differs from the commit; the pipeline's own
    products (results/, runs/, dvc.lock), rewritten while a run is under way, do not count.
    """
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                      ":!results", ":!runs", ":!dvc.lock", ":!pipelines/*dvc.lock"], cwd=root, capture_output=True, text=True, check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


def environment() -> dict[str, Any]:
    """Interpreter, platform and package versions (read from metadata, without importing torch)."""
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    env = {"python": platform.python_version(), "platform": platform.platform(), "packages": versions,
           "via_worker": os.environ.get("CMML_IN_WORKER") == "1"}
    torch = sys.modules.get("torch")
    if torch is not None:
        env["cuda"] = torch.version.cuda
        env["cuda_available"] = bool(torch.cuda.is_available())
        env["torch_threads"] = torch.get_num_threads()
    return env


@dataclass
class StageRun:
    """Context for one stage execution: temp outputs, atomic commit, sidecar.

    ``outputs`` maps each declared output (file or directory) to whether it is a directory.
    Inside the ``with`` block the body writes to ``run.tmp(out)``; on success every temp output
    replaces its final path and the sidecar (``sidecar`` path) is written last. On failure
    nothing is renamed and the temp files are removed.
    """

    stage: str
    name: str
    params_values: dict[str, Any]
    inputs: list[Path]
    outputs: dict[Path, bool]
    sidecar: Path
    sources: list[Path]
    command: list[str] = field(default_factory=lambda: list(sys.argv))
    root: Path = field(default_factory=Path.cwd)
    seed: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    _tmp: dict[Path, Path] = field(default_factory=dict)
    _t0: float = 0.0

    def __enter__(self) -> StageRun:
        self._t0 = _stage_started or time.time()
        for out, is_dir in self.outputs.items():
            final = self.root / out
            final.parent.mkdir(parents=True, exist_ok=True)
            for stale in final.parent.glob(f".{final.name}.*.tmp"):  # left by a killed earlier run
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
            if is_dir:
                self._tmp[out] = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
            else:
                fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
                os.close(fd)
                self._tmp[out] = Path(tmp)
        return self

    def tmp(self, out: str | Path) -> Path:
        """Temporary path to write the declared output ``out`` to."""
        return self._tmp[Path(out)]

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        try:
            if exc_type is None:
                self._commit()
        finally:
            for tmp in self._tmp.values():
                if tmp.is_dir():
                    shutil.rmtree(tmp, ignore_errors=True)
                elif tmp.exists():
                    tmp.unlink()

    def _commit(self) -> None:
        wall = time.time() - self._t0
        sidecar_final = self.root / self.sidecar
        if sidecar_final.exists():
            sidecar_final.unlink()
        for out, tmp in self._tmp.items():
            final = self.root / out
            if final.is_dir():
                shutil.rmtree(final)
            elif final.exists():
                final.unlink()
            publish_mode(tmp)
            os.replace(tmp, final)
        record = {
            "schema": SCHEMA,
            "stage": self.stage,
            "name": self.name,
            "command": self.command,
            "params": self.params_values,
            "params_hash": params_hash(self.params_values),
            "inputs": hash_tree(self.inputs, self.root),
            "outputs": hash_tree(list(self.outputs), self.root),
            "code": {
                **git_state(self.root),
                "sources": {p.as_posix(): hash_file(self.root / p)["sha256"] for p in self.sources if (self.root / p).is_file()},
                # docstring-free AST hashes of every Python file read (sources, and the inputs of code stages)
                "fingerprints": {p.as_posix(): file_fingerprint(self.root / p, self.root / FINGERPRINT_CACHE)
                                 for p in sorted({*self.sources, *(q for q in self.inputs if q.suffix == ".py")})
                                 if (self.root / p).is_file()},
                "loaded": sorted(m for m in set(sys.modules) - _dispatch_modules if m == "cmml" or m.startswith("cmml.")),
            },
            "env": environment(),
            "device": self.device,
            "seed": self.seed,
            "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "wall_s": round(wall, 3),
            "extra": self.extra,
        }
        write_json(sidecar_final, record)


def stage_run(stage: Any, params: dict[str, Any], *, seed: int | None = None, device: str = "cpu",
              extra: dict[str, Any] | None = None) -> StageRun:
    """A :class:`StageRun` for a planned :class:`cmml.pipeline.stage.Stage` (deps, outs, keys from the plan).

    The recorded sources are the import closure of the stage's entry modules (raw sha256 each);
    the command is the stage's planned command (repository-relative, the same on every machine).
    """
    from cmml.config import subset
    from cmml.pipeline.sources import closure, rel_path

    return StageRun(
        stage=stage.handler,
        name=stage.name,
        params_values=subset(params, stage.params),
        inputs=[Path(d) for d in stage.all_deps],
        outputs={Path(o): o in stage.dir_outs for o in stage.outs if o != stage.sidecar},
        sidecar=Path(stage.sidecar),
        sources=[Path(rel_path(m)) for m in closure(stage.code_entries)],
        command=list(stage.cmd),
        seed=seed,
        device=device,
        extra=dict(extra or {}),
    )
