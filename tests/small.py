"""What the end-to-end tests share: the shrunken params.yaml they run on, and killing a stage mid-way."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from cmml.families.registry import FAMILIES

ROOT = Path(__file__).resolve().parents[1]


def keep_families(params: dict[str, Any], families: Sequence[str] = ("cmml",)) -> dict[str, Any]:
    """``params`` without the sections of the registered families not in ``families`` (modified in place)."""
    for fam in FAMILIES:
        if fam not in families:
            params.pop(fam, None)
    return params


def small_params(num_classes: int, per_class: dict[str, int], runs: dict[str, dict[str, Any]] | None = None,
                 seeds: Sequence[int] = (0,), families: Sequence[str] = ("cmml",)) -> dict[str, Any]:
    """The repository's params.yaml with a tiny embedded benchmark, 2 tasks, one pretraining epoch, CPU
    with one thread and the ``both70`` setting only; with ``runs`` ({run name: overrides of its
    block}), experiment ``main`` trains just those runs on ``both70`` for ``seeds``. Only the
    sections of ``families`` are kept."""
    p = keep_families(yaml.safe_load((ROOT / "params.yaml").read_text()), families)
    p["benchmark"].update(num_classes=num_classes, per_class=per_class)
    p["tasks"]["num_tasks"] = 2
    p["pretrain"]["epochs"] = 1
    p["runtime"].update(device="cpu", threads=1)
    p["settings"] = {"both70": p["settings"]["both70"]}
    if runs is not None:
        p["cmml"]["methods"] = {run: {**p["cmml"]["methods"][run], **over} for run, over in runs.items()}
        p["cmml"]["experiments"] = {"main": {"methods": list(runs), "settings": ["both70"], "seeds": list(seeds)}}
    return p


def kill_after_epoch(cmd: list[str], env: dict[str, str], epoch: int, task: int = 0,
                     timeout: float = 120.0) -> dict[str, Any]:
    """Start the train stage command ``cmd``, SIGKILL it once the resume state (``.cmml/resume/*.pt``) of
    the ``task``-th task it trains (counted from 0 in order of appearance; each task has its own file)
    records ``epoch``, and return that state; fails when the stage ends before it could be killed."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    resume_dir, deadline = Path(".cmml/resume"), time.time() + timeout
    seen: list[Path] = []
    while time.time() < deadline and proc.poll() is None:
        seen += [f for f in sorted(resume_dir.glob("*.pt")) if f not in seen]
        with contextlib.suppress(Exception):  # a file being renamed into place
            if len(seen) > task and torch.load(seen[task], weights_only=False)["epoch"] >= epoch:
                break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the stage finished before it could be killed; raise its epochs"
    return torch.load(seen[task], weights_only=False)
