"""Intra-task resume state for the training loop, kept outside the declared outputs.

Both workflow tools delete a stage's declared outputs before running it, so the state a killed
train stage can resume from lives under ``.cmml/resume/<key>.pt``, where the key is a hash of
everything that determines the run (stage name, its params values, its code fingerprint file's
content). The loop writes it atomically after every epoch (model state, optimizer, schedule,
the data-order generator and torch's RNG, the running log) and the stage deletes it once its
outputs are committed; a rerun of the same command with the same inputs resumes after the last
finished epoch and ends with the same result as an uninterrupted run (CPU, same seed).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

RESUME_DIR = Path(".cmml/resume")


def digest(key_material: dict[str, Any]) -> str:
    """Short hash naming the resume state of ``key_material`` (see :func:`stage_key`)."""
    return hashlib.sha256(json.dumps(key_material, sort_keys=True, default=str).encode()).hexdigest()[:24]


class ResumeFile:
    """One task's resume state on disk."""

    def __init__(self, key_material: dict[str, Any], root: Path = RESUME_DIR):
        self.path = root / f"{digest(key_material)}.pt"

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None (absent or unreadable: a partial write is never renamed into place)."""
        if not self.path.is_file():
            return None
        try:
            return torch.load(self.path, map_location="cpu", weights_only=False)
        except Exception:  # noqa: BLE001 - a damaged file means starting over
            return None

    def save(self, state: dict[str, Any]) -> None:
        """Write ``state`` atomically (temp file + rename)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)

    def clear(self) -> None:
        """Remove the state (the stage's outputs are committed)."""
        self.path.unlink(missing_ok=True)


def stage_key(stage: Any, params: dict[str, Any]) -> dict[str, Any]:
    """What identifies a stage's computation: name, params values, code fingerprint, input sidecars."""
    from cmml.config import subset

    code = Path(stage.code_file).read_text() if stage.code_file and Path(stage.code_file).is_file() else ""
    return {"name": stage.name, "params": subset(params, stage.params), "code": code,
            "deps": {d: Path(f"{d}.prov.json").stat().st_mtime_ns for d in stage.deps if Path(f"{d}.prov.json").is_file()}}
