"""One train stage per run: the run's tasks trained one after another into one checkpoint directory.

Task t still starts from task t-1's checkpoint as read back from disk, with the method built
afresh and seeded exactly as a stage of its own would, so a chain writes the bytes per-task
stages wrote; what it saves is the per-stage cost of the workflow tools and of loading the
run's context, paid once per run instead of once per task. The checkpoints live in one declared
output directory (``<out>/task<t>``): the workflow tools then hash and lock one path per run
instead of one per task.

Resuming: a finished task's checkpoint directory is kept under ``.cmml/resume/<key>.chain/``
(outside the declared outputs, which both tools delete before a job) until the stage commits;
a killed stage restarts at its first unfinished task, and inside that task the loop resumes
after its last finished epoch (:mod:`cmml.train.resume`, one resume file per task).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cmml.pipeline.atomic import write_json
from cmml.pipeline.stage import task_ckpt
from cmml.provenance.sidecar import StageRun, stage_run
from cmml.train.distributed import Dist
from cmml.train.resume import RESUME_DIR, ResumeFile, digest, stage_key

# step(task, previous checkpoint directory or None, directory to write into, the task's resume file) -> log
Step = Callable[[int, Path | None, Path, ResumeFile], dict[str, Any]]


def _link_or_copy(src: str, dst: str) -> None:
    """Hard-link ``src`` to ``dst`` (same file system), else copy it."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def train_chain(stage: Any, params: dict[str, Any], out: str, tasks: Sequence[int], step: Step, *, seed: int,
                device: str, dist: Dist | None = None, extra: dict[str, Any] | None = None,
                finish: Callable[[StageRun], None] | None = None) -> None:
    """Run ``step`` for every task of ``tasks`` in order, then commit them as ``out/task<t>`` (``out`` declared).

    The sidecar records each task's log under ``extra["train"]["task<t>"]``. With ``dist`` every
    rank trains each task and rank 0 alone writes. ``finish`` runs before the commit, with the
    checkpoints in place (``task_ckpt(str(sr.tmp(out)), t)``): a stage that also evaluates writes its other outputs there.
    """
    key = stage_key(stage, params)
    root = RESUME_DIR / f"{digest(key)}.chain"
    main = dist is None or dist.is_main
    logs: dict[str, dict[str, Any]] = {}
    prev: Path | None = None
    for t in tasks:
        done, log_file = root / f"task{t}", root / f"task{t}.json"
        if done.is_dir() and log_file.is_file():  # finished by an earlier, killed run of this stage
            logs[f"task{t}"], prev = json.loads(log_file.read_text()), done
            if main:
                print(f"{stage.name}: task {t} was finished by an earlier run; kept", file=sys.stderr, flush=True)
            continue
        tmp = root / f".task{t}.tmp"
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        if dist is not None:
            dist.barrier()
        resume = ResumeFile({**key, "task": t})
        logs[f"task{t}"] = step(t, prev, tmp, resume)
        if main:
            write_json(log_file, logs[f"task{t}"])
            shutil.rmtree(done, ignore_errors=True)
            os.replace(tmp, done)  # the commit point of task t
            resume.clear()
        if dist is not None:
            dist.barrier()
        prev = done
    if main:
        with stage_run(stage, params, seed=seed, device=device, extra={"train": logs, **(extra or {})}) as sr:
            for t in tasks:
                shutil.copytree(root / f"task{t}", task_ckpt(str(sr.tmp(out)), t), copy_function=_link_or_copy)
            if finish is not None:
                finish(sr)
        shutil.rmtree(root)
    if dist is not None:
        dist.barrier()
