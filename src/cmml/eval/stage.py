"""The evaluate stage: score one checkpoint (one row of the matrix) on every task's test split.

CLI: ``python -m cmml evaluate --method RUN --setting S --seed K --task T`` (T = -1: the
untrained model as task 0's training starts from it, the FWT baseline). Writes ``scores.json``: per task j the primary metric
(accuracy, or F1-macro for multi-label) over the logit columns of ``TaskInfo.columns``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cmml.config import Run
from cmml.eval.metrics import score
from cmml.pipeline.atomic import write_json
from cmml.pipeline.plan import INIT_TASK, Stage
from cmml.provenance.sidecar import stage_run
from cmml.train.checkpoint import CKPT_FILE, build_method, load_checkpoint, load_context
from cmml.train.device import select_device


def run(stage: Stage, params: dict[str, Any]) -> None:
    """Evaluate the checkpoint of ``stage.args['task']`` on all tasks' test splits."""
    from cmml.data.dataset import load_split

    a = stage.args
    run_id, row = Run(a["method"], a["setting"], a["seed"]), a["task"]
    device = select_device(params["runtime"])
    ctx, backbone = load_context(params, run_id)
    method = build_method(ctx, backbone)
    if row == INIT_TASK:
        method.begin_task(0)  # the state task 0's training starts from (same seed, same init)
    else:
        load_checkpoint(Path(ctx.paths.ckpt(run_id, row)) / CKPT_FILE, ctx, method, row)
    method.to(device.device).eval()
    test = load_split(ctx.data_dir, Path(ctx.paths.tasks), "test", ctx.tokenizer, missing_dir=ctx.missing_dir)
    bs = params["runtime"]["eval_batch_size"]
    per_task: dict[str, list[float]] = {}
    counts: list[int] = []
    for j in range(ctx.info.num_tasks):
        part = test.subset(torch.nonzero(test.tasks == j).flatten())
        logits, labels = [], []
        with torch.no_grad():
            for b in part.batches(bs, shuffle=False):
                with device.autocast():
                    logits.append(method.predict(b.to(device.device)).float().cpu())
                labels.append(b.labels)
        lo, hi = ctx.info.columns(j, row)
        z, y = torch.cat(logits)[:, lo:hi], torch.cat(labels)
        y = y[:, lo:hi] if ctx.info.multilabel else y - lo
        for k, v in score(z, y, ctx.info.multilabel).items():
            per_task.setdefault(k, []).append(round(v, 4))
        counts.append(len(part))
    result = {"row": row, "metric": "f1_macro" if ctx.info.multilabel else "accuracy", "scores": per_task,
              "counts": counts, "scenario": ctx.info.scenario}
    with stage_run(stage, params, seed=run_id.seed, device=device.describe(), extra={"scores": result}) as sr:
        write_json(sr.tmp(stage.outs[0]) / "scores.json", result)
