"""The train stage: one task of one run; task t starts from task t-1's checkpoint.

CLI: ``python -m cmml train --method RUN --setting S --seed K --task T``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from cmml.config import Run
from cmml.pipeline.atomic import write_json
from cmml.pipeline.plan import Stage, is_joint
from cmml.provenance.sidecar import stage_run
from cmml.train.checkpoint import CKPT_FILE, build_method, load_checkpoint, load_context, save_checkpoint
from cmml.train.device import select_device
from cmml.train.loop import fit


def run(stage: Stage, params: dict[str, Any]) -> None:
    """Train task ``stage.args['task']`` of the run and write its checkpoint."""
    from cmml.data.dataset import load_split

    a = stage.args
    run_id, task = Run(a["method"], a["setting"], a["seed"]), a["task"]
    device = select_device(params["runtime"])
    ctx, backbone = load_context(params, run_id)
    joint = is_joint(params, run_id.method)
    method = build_method(ctx, backbone)
    if task > 0 and not joint:
        load_checkpoint(Path(ctx.paths.ckpt(run_id, task - 1)) / CKPT_FILE, ctx, method, task - 1)
    method.to(device.device)
    task_ids = list(range(ctx.info.num_tasks)) if joint else [task]
    data = load_split(ctx.data_dir, Path(ctx.paths.tasks), "train", ctx.tokenizer, task_ids=task_ids,
                      missing_dir=ctx.missing_dir)
    method.begin_task(task)
    hp = ctx.hp
    gen = torch.Generator().manual_seed(run_id.seed * 1000 + task)

    def batches(epoch: int):
        for b in data.batches(hp["batch_size"], shuffle=True, generator=gen):
            yield b.to(device.device)

    log = fit(method, batches, lambda b: method.loss(b, task), epochs=hp["epochs"],
              steps_per_epoch=math.ceil(len(data) / hp["batch_size"]), lr=hp["lr"],
              weight_decay=hp["weight_decay"], warmup=hp["warmup"], device=device)
    method.end_task(task)
    log.update({"task": task, "train_samples": len(data), "tasks_in_data": task_ids})
    with stage_run(stage, params, seed=run_id.seed, device=device.describe(), extra={"train": log}) as sr:
        out = sr.tmp(stage.outs[0])
        save_checkpoint(out / CKPT_FILE, ctx, method.cpu(), task)
        write_json(out / "train_log.json", log)
