"""Stage handler ``cmml/run/<setting>/<method>/seed<k>``: train the tasks of one run in sequence, then score them.

Task t starts from task t-1's checkpoint (:mod:`cmml.train.chain`); joint training has one task
that sees every task's data. Once every checkpoint is written, the untrained model and each
checkpoint are scored on every task's test split (:mod:`cmml.families.cmml.evaluate`) before the
outputs are committed.
The method's hooks (``cmml.methods.base``) get a :class:`~cmml.methods.base.TaskContext`.
With ``runtime.nproc_per_stage > 1`` the stage runs as that many data-parallel ranks
(:mod:`cmml.train.distributed`); rank 0 writes the outputs while the others wait.
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Any

import torch

from cmml.errors import ConfigError
from cmml.families.cmml.evaluate import evaluate
from cmml.families.cmml.runs import SECTION
from cmml.methods.base import TaskContext
from cmml.pipeline.atomic import write_json
from cmml.pipeline.stage import task_ckpt
from cmml.provenance.sidecar import StageRun
from cmml.train.chain import train_chain
from cmml.train.checkpoint import CKPT_FILE, build_method, load_checkpoint, load_context, save_checkpoint
from cmml.train.device import DeviceInfo, select_device
from cmml.train.distributed import Dist, in_torchrun, process_group
from cmml.train.loop import Resumable, fit
from cmml.train.resume import ResumeFile


VOLATILE = ("wall_s", "samples_per_s", "resumed_after_epoch")  # in the sidecar only: outputs hold deterministic bytes


def run(stage: Any, params: dict[str, Any]) -> None:
    """Train the run's tasks, write their checkpoints and scores (as one rank when launched so)."""
    if stage.nproc == 1:
        train(stage, params, select_device(params["runtime"]), None)
        return
    world = int(os.environ["WORLD_SIZE"]) if in_torchrun() else 1
    if world != stage.nproc:
        raise ConfigError(f"{stage.params_file}: key 'runtime.nproc_per_stage' is {stage.nproc}, but this process is "
                          f"one of {world}; run the stage as `python -m cmml run {stage.name}`, which starts the processes")
    device = select_device(params["runtime"], int(os.environ["LOCAL_RANK"]))
    with process_group(device.device) as dist:
        train(stage, params, device, dist)


def train(stage: Any, params: dict[str, Any], device: DeviceInfo, dist: Dist | None) -> None:
    """The stage's work on ``device``; with ``dist`` this process is one rank and only rank 0 writes."""
    from cmml.data.dataset import Loading, load_split

    a = stage.args
    ctx, pristine = load_context(a, params, SECTION)
    main = dist is None or dist.is_main

    def step(task: int, prev: Path | None, out: Path, resume_file: ResumeFile) -> dict[str, Any]:
        method = build_method(ctx, copy.deepcopy(pristine))  # as a stage of its own: a fresh backbone
        if prev is not None:
            load_checkpoint(prev / CKPT_FILE, ctx, method, task - 1)
        method.to(device.device)
        task_ids = list(range(ctx.info.num_tasks)) if ctx.joint else [task]
        data = load_split(ctx.data_dir, ctx.tasks_dir, "train", ctx.tokenizer, task_ids=task_ids,
                          missing_dir=ctx.missing_dir, fill=ctx.fill,
                          loading=Loading.from_runtime(params["runtime"], device.device))
        gen = torch.Generator().manual_seed(ctx.seed * 1000 + task)
        tctx = TaskContext(task=task, data=data, device=device.device, generator=gen,
                           previous=method.frozen_copy() if method.NEEDS_PREVIOUS and task > 0 else None)
        method.begin_task(tctx)
        hp = ctx.hp

        def batches(epoch: int):
            for b in data.batches(hp["batch_size"], shuffle=True, generator=gen):
                yield method.replay(b.to(device.device), tctx)

        resume = Resumable(resume_file, method.trainable_state,
                           lambda state: method.load_trainable_state(state, str(resume_file.path)), (gen,))
        log = fit(method, batches, lambda b: method.loss(b, task), epochs=hp["epochs"],
                  steps_per_epoch=math.ceil(len(data) / hp["batch_size"]), optimizer=method.configure_optimizer(),
                  warmup=hp["warmup"], device=device, after_step=method.after_optimizer_step,
                  label=f"{stage.name} task {task}", resume=resume, dist=dist)
        method.end_task(tctx)
        log.update({"task": task, "train_samples": len(data), "tasks_in_data": task_ids})
        if main:
            save_checkpoint(out / CKPT_FILE, ctx, method.cpu(), task)
            write_json(out / "train_log.json", {k: v for k, v in log.items() if k not in VOLATILE})
        return log

    def score(sr: StageRun) -> None:
        ckpts = {t: Path(task_ckpt(str(sr.tmp(a["out"])), t)) for t in a["task_ids"]}
        evaluate(a, params, ctx, pristine, device, ckpts, sr)

    train_chain(stage, params, a["out"], a["task_ids"], step, seed=ctx.seed, device=device.describe(), dist=dist,
                extra={"distributed": dist.describe()} if dist else None, finish=score)
