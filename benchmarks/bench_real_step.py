"""One RebQ training step at the papers' scale on the CPU: ViLT-B/32 (random weights, built from its
config, nothing downloaded), batch 4 at 70 % both-missing, the preset's pools (128 rows, length 8,
layers 0-7). Prints the measured step time, the step's FLOPs (torch's FLOP counter) and the CPU's
achieved FLOP/s, from which the README's GPU-time estimates are derived.

Usage: ``python benchmarks/bench_real_step.py [--threads N] [--text-len L] [--steps S]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from cmml.methods.base import TaskContext, TaskInfo
from cmml.methods.rebq import RebQ
from cmml.models.backbone import Backbone, new_vilt

_spec = importlib.util.spec_from_file_location("bench_rebq", Path(__file__).with_name("bench_rebq.py"))
bench_rebq = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_rebq)  # type: ignore[union-attr]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--text-len", type=int, default=32, help="padded text length of the batch (Food-101 titles ~32)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--tasks", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from transformers import ViltConfig

    cfg = ViltConfig(max_position_embeddings=max(40, args.text_len), hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)  # ViLT-B/32: 768 wide, 12 layers, 384-pixel images, patch 32
    backbone = Backbone(new_vilt(cfg).eval())
    per_task = 100 // args.tasks
    info = TaskInfo(offsets=tuple(range(0, per_task * args.tasks + 1, per_task)), multilabel=False, scenario="class")
    layers = list(range(8))
    rebq = RebQ(backbone, info, bench_rebq.rebq_hparams(memory_layers=layers, text_layers=layers, image_layers=layers,
                                                        lr=1e-4, batch_size=4))
    rebq.begin_task(TaskContext(0, None, torch.device("cpu")))
    batch = bench_rebq.synthetic_batch(4, cfg.vocab_size, args.text_len, 384, per_task, missing=0.7, seed=0)
    opt = torch.optim.AdamW([p for p in rebq.parameters() if p.requires_grad], lr=1e-4)
    rebq.train()

    def step() -> None:
        loss, _ = rebq.loss(batch, 0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    counter = FlopCounterMode(display=False)
    with counter:
        step()  # also the warm-up
    flops = counter.get_total_flops()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    t = min(times)
    print(f"ViLT-B/32, RebQ step, batch 4 (70% both-missing, seed 0: {int((batch.codes == 0).sum())} complete), "
          f"384x384 images, text {args.text_len} tokens, {torch.get_num_threads()} CPU thread(s)")
    print(f"step: {t:.2f} s (best of {args.steps}); {flops / 1e9:.0f} GFLOP; CPU achieved {flops / t / 1e9:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
