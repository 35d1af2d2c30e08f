"""Every row of one run's score matrix, made by the run's stage once its checkpoints are written.

Row ``init`` is the untrained model (the state task 0's training starts from, for FWT), row t
the checkpoint after task t; each is scored on every task's test split over the logit columns of
``TaskInfo.columns`` (class-incremental: every class seen by then). Writes ``scores.json``:
``{"metric", "scenario", "counts", "rows": {"init"|"task<t>": {metric: [per task]}}, "params": {"trained",
"backbone"}}`` — ``trained`` counts the parameters a checkpoint of the method holds (what it adds or
trains, frozen earlier-task rows included), ``backbone`` the backbone's own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cmml.eval.metrics import score
from cmml.families.cmml.runs import INIT_ROW, row_label
from cmml.methods.base import Method
from cmml.models.backbone import reuse_frozen_passes
from cmml.pipeline.atomic import write_json
from cmml.provenance.sidecar import StageRun
from cmml.train.checkpoint import CKPT_FILE, RunContext, build_method, load_checkpoint, untrained
from cmml.train.device import DeviceInfo

SCORES = "scores.json"


def trained_params(method: torch.nn.Module) -> int:
    """Parameters a checkpoint of ``method`` stores: its own, plus backbone weights it trains."""
    return sum(v.numel() for k, v in method.named_parameters() if not k.startswith("backbone.") or v.requires_grad)


def frozen_backbone(method: Method) -> bool:
    """Whether ``method`` trains nothing in the backbone: then every checkpoint of a run leaves it as
    it is, and the frozen (query) passes on a test batch are made once per stage
    (:func:`~cmml.models.backbone.reuse_frozen_passes`), giving the very tensors a recomputation gives."""
    return not any(p.requires_grad for p in method.backbone.parameters())


def shared_features(method: Method) -> bool:
    """Whether ``method``'s logits are its head on the plain frozen backbone's features.

    Then every row of a run (each checkpoint holds only the head) sees the same features, so they are
    computed once per stage; the logits are the very operations :meth:`Method.predict` runs.
    """
    cls = type(method)
    return (cls.features is Method.features and cls.logits is Method.logits and cls.predict is Method.predict
            and frozen_backbone(method))


def evaluate(a: dict[str, Any], params: dict[str, Any], ctx: RunContext, backbone: Any, device: DeviceInfo,
             ckpts: dict[int, Path], sr: StageRun) -> None:
    """Score the untrained model and every checkpoint ``ckpts[row]`` on all tasks' test splits; write into ``sr``.

    ``a`` holds the run stage's args (``rows`` to score, eval directory ``eval``); ``backbone`` is
    the run's pristine backbone (a checkpoint that trains it overwrites its weights).
    """
    from cmml.data.dataset import Loading, load_split

    test = load_split(ctx.data_dir, ctx.tasks_dir, "test", ctx.tokenizer, missing_dir=ctx.missing_dir, fill=ctx.fill,
                      loading=Loading.from_runtime(params["runtime"], device.device))
    parts = [test.subset(torch.nonzero(test.tasks == j).flatten()) for j in range(ctx.info.num_tasks)]
    bs = params["runtime"]["eval_batch_size"]
    rows: dict[str, dict[str, list[float]]] = {}
    counted: dict[str, int] = {}
    features: dict[tuple[int, int], torch.Tensor] = {}  # (task, batch) -> features, see shared_features
    passes: dict[tuple[int, int], list] = {}  # (task, batch) -> frozen passes, see frozen_backbone
    for row in a["rows"]:
        method = build_method(ctx, backbone)
        if row == INIT_ROW:
            untrained(method, device.device)
        else:
            load_checkpoint(ckpts[row] / CKPT_FILE, ctx, method, row)
        method.to(device.device).eval()
        counted = {"trained": trained_params(method), "backbone": sum(p.numel() for p in backbone.parameters())}
        per_task: dict[str, list[float]] = {}
        shared, frozen = shared_features(method), frozen_backbone(method)
        for j, part in enumerate(parts):
            logits, labels = [], []
            with torch.no_grad():
                for i, b in enumerate(part.batches(bs, shuffle=False)):
                    with device.autocast():
                        if shared:
                            if (j, i) not in features:
                                features[j, i] = method.features(b.to(device.device))
                            z = method.head(features[j, i])
                        elif frozen:
                            with reuse_frozen_passes(passes.setdefault((j, i), [])):
                                z = method.predict(b.to(device.device))
                        else:
                            z = method.predict(b.to(device.device))
                    logits.append(z.float().cpu())
                    labels.append(b.labels)
            lo, hi = ctx.info.columns(j, row)
            z, y = torch.cat(logits)[:, lo:hi], torch.cat(labels)
            y = y[:, lo:hi] if ctx.info.multilabel else y - lo
            for k, v in score(z, y, ctx.info.multilabel).items():
                per_task.setdefault(k, []).append(round(v, 4))
        rows[row_label(row)] = per_task
    result = {"metric": "f1_macro" if ctx.info.multilabel else "accuracy", "scenario": ctx.info.scenario,
              "counts": [len(p) for p in parts], "rows": rows, "params": counted}
    sr.extra["scores"] = result
    write_json(sr.tmp(a["eval"]) / SCORES, result)
