"""Train-step and inference cost of every registered method relative to head fine-tuning.

Usage: ``python benchmarks/bench_methods.py [--threads N] [--repeats R] [--params params.yaml]``.

Every method is built with its params.yaml block (the run named like the method, else the first
run using it) on the same randomly initialised tiny ViLT of params.yaml's ``backbone.tiny`` size,
brought to task 1 of a 5-task, 20-class sequence (task 0's ``end_task`` ran, so ER has a memory,
EWC a Fisher, LwF a previous model), and timed on the same 32-sample batch with 70 % of the samples
missing a modality: one optimiser step (replay, loss, backward, step, after-step hook) and one
no-grad prediction of 256 samples. Medians over ``R`` interleaved rounds, printed as ms and as the
ratio to ``finetune`` with a frozen backbone (the cheapest sequential baseline).
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from typing import Any

import torch
import yaml

from cmml.data.dataset import Batch
from cmml.families.cmml.runs import SECTION, method_block
from cmml.methods.base import Method, TaskContext, TaskInfo
from cmml.methods.registry import METHODS, get_method
from cmml.models.backbone import Backbone, new_vilt, tiny_config

_spec = importlib.util.spec_from_file_location("bench_rebq", Path(__file__).with_name("bench_rebq.py"))
_rebq = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_rebq)  # type: ignore[union-attr]
_median_times = _rebq._median_times

VOCAB, CLASSES, TASKS, TRAIN_PER_TASK = 200, 20, 5, 240
REFERENCE = "finetune"


class MemoryData:
    """The slice of :class:`cmml.data.dataset.SplitData` a method's hooks use, over one in-memory batch."""

    def __init__(self, batch: Batch):
        self.all = batch

    def __len__(self) -> int:
        return int(self.all.labels.shape[0])

    def batch(self, idx: torch.Tensor) -> Batch:
        return self.all.rows(idx)

    def batches(self, batch_size: int, shuffle: bool, generator: torch.Generator | None = None):
        order = torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        for i in range(0, len(self), batch_size):
            yield self.batch(order[i:i + batch_size])


def make_batch(n: int, params: dict[str, Any], task: int, seed: int) -> Batch:
    """``n`` synthetic samples of ``task`` (70 % missing, type both), as the data loader delivers them."""
    b = _rebq.synthetic_batch(n, VOCAB, params["benchmark"]["max_text_len"], params["benchmark"]["image_size"],
                              CLASSES // TASKS, missing=0.7, seed=seed)
    codes = b.codes
    present = torch.stack([codes != 2, codes != 1], dim=1)  # image, text
    return Batch(pixel_values=b.pixel_values, input_ids=b.input_ids, attention_mask=b.attention_mask,
                 labels=b.labels + task * (CLASSES // TASKS), present=present,
                 tasks=torch.full((n,), task, dtype=torch.long), empty_ids=b.empty_ids, empty_mask=b.empty_mask,
                 empty_pixels=b.empty_pixels, modalities=("image", "text"))


def run_for(params: dict[str, Any], method: str) -> str:
    """The params run timed for ``method``: the run named like it, else the first run using it."""
    runs = params[SECTION]["methods"]
    if method in runs and method_block(params, method, "params.yaml")["method"] == method:
        return method
    return next(r for r in runs if method_block(params, r, "params.yaml")["method"] == method)


def at_task1(name: str, params: dict[str, Any], backbone: Backbone, info: TaskInfo) -> tuple[Method, TaskContext, Any]:
    """The method after task 0's hooks, task 1 begun; its context and optimiser."""
    hp = {k: v for k, v in method_block(params, run_for(params, name), "params.yaml").items() if k != "method"}
    torch.manual_seed(0)
    m: Method = get_method(name)(backbone, info, hp)
    gen = torch.Generator().manual_seed(0)
    ctx0 = TaskContext(task=0, data=MemoryData(make_batch(TRAIN_PER_TASK, params, 0, 0)), device=torch.device("cpu"),
                       generator=gen)
    m.begin_task(ctx0)
    m.end_task(ctx0)
    ctx1 = TaskContext(task=1, data=MemoryData(make_batch(TRAIN_PER_TASK, params, 1, 1)), device=torch.device("cpu"),
                       generator=gen, previous=m.frozen_copy() if m.NEEDS_PREVIOUS else None)
    m.begin_task(ctx1)
    m.train()
    return m, ctx1, m.configure_optimizer()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    params = yaml.safe_load(Path(args.params).read_text())
    tiny = params["backbone"]["tiny"]
    cfg = tiny_config(VOCAB, params["benchmark"]["max_text_len"], params["benchmark"]["image_size"], tiny)
    torch.manual_seed(0)
    backbone = Backbone(new_vilt(cfg).eval())
    info = TaskInfo(offsets=tuple(range(0, CLASSES + 1, CLASSES // TASKS)), multilabel=False, scenario="class")
    names = [REFERENCE, *sorted(n for n in METHODS if n not in (REFERENCE, "joint"))]
    built = {n: at_task1(n, params, backbone, info) for n in names}
    batch = make_batch(params[SECTION]["methods"][run_for(params, REFERENCE)]["batch_size"], params, 1, 7)
    test = make_batch(256, params, 1, 8)

    def step(n: str):
        m, ctx, opt = built[n]

        def go() -> None:
            loss, _ = m.loss(m.replay(batch, ctx), 1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            m.after_optimizer_step(opt)
        return go

    def infer(n: str):
        m = built[n][0]

        def go() -> None:
            m.eval()
            with torch.no_grad():
                m.predict(test)
            m.train()
        return go

    train_s = _median_times([step(n) for n in names], args.repeats)
    infer_s = _median_times([infer(n) for n in names], args.repeats)
    print(f"threads {args.threads}, batch {batch.labels.shape[0]} (70 % missing), tiny ViLT {tiny}, "
          f"median of {args.repeats} rounds; ratio = time / {REFERENCE} (frozen backbone)")
    print(f"{'method':<14}{'train step ms':>14}{'ratio':>8}{'predict 256 ms':>16}{'ratio':>8}")
    for n, t, e in zip(names, train_s, infer_s):
        print(f"{n:<14}{1000 * t:>14.1f}{t / train_s[0]:>8.2f}{1000 * e:>16.1f}{e / infer_s[0]:>8.2f}")


if __name__ == "__main__":
    main()
