"""RebQ cost on a tiny ViLT: train step vs head-only fine-tune, vectorised vs per-sample forward.

Usage: ``python benchmarks/bench_rebq.py [--threads N] [--repeats R]``. Everything is measured in
one run on the same batch and backbone. Also home of :func:`reference_forward`, the plain
per-sample RebQ that tests/test_rebq.py checks the vectorised implementation against.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from cmml.methods.base import TaskContext, TaskInfo
from cmml.methods.finetune import FineTune
from cmml.methods.prompt_pool import PromptPool
from cmml.methods.rebq import RebQ
from cmml.models.backbone import Backbone, Injection, new_vilt, tiny_config

CLS, SEP = 2, 3  # token ids of [CLS], [SEP] in the synthetic batches


def _prompt(pool: PromptPool, li: int, q: Tensor) -> Tensor:
    """Σ_k cos(q ⊙ A_k, K_k) P_k for one query and one layer, one component at a time."""
    p, k, a = pool.rows()
    out = torch.zeros_like(p[li, 0])
    for r in range(p.shape[1]):
        out = out + F.cosine_similarity(q * a[li, r], k[li, r], dim=0) * p[li, r]
    return out


def reference_forward(method: RebQ, batch: Any, train: bool) -> tuple[Tensor, Tensor | None]:
    """Logits of the original samples and L_rec (None when absent), one sample and layer at a time."""
    hp, pools, codes = method.hp, method.pools, batch.codes.tolist()
    memory = pools["memory"] if "memory" in pools else None
    text, image = (pools["shared"], pools["shared"]) if hp["shared_pool"] else (pools["text"], pools["image"])
    b = len(codes)
    ids, mask, pix = batch.input_ids, batch.attention_mask, batch.pixel_values
    samples = [(ids[i], mask[i], pix[i], codes[i], i) for i in range(b)]
    if train and memory is not None and hp["alpha"] > 0:
        complete = [i for i in range(b) if codes[i] == 0]
        samples += [(batch.empty_ids, batch.empty_mask, pix[i], 3, i) for i in complete]
        samples += [(ids[i], mask[i], batch.empty_pixels, 4, i) for i in complete]

    def encode(s: tuple, inject: Injection | None = None) -> tuple[Tensor, Tensor]:
        out = method.backbone(s[0][None], s[1][None], s[2][None], inject)
        return out.text_cls[0], out.image_cls[0]

    with torch.no_grad():
        h0 = [encode(s) for s in samples]
    h1 = h0
    if memory is not None:
        h1 = []
        for s, (qt, qi) in zip(samples, h0):
            deep = {}
            for li, layer in enumerate(memory.layers):
                m = torch.zeros_like(memory.rows()[0][li, 0])
                if s[3] in (0, 2, 4):
                    m = m + _prompt(memory, li, qt)
                if s[3] in (0, 1, 3):
                    m = m + _prompt(memory, li, qi)
                deep[layer] = m[None]
            h1.append(encode(s, Injection(deep_prompts=deep)))
    target = h1 if hp["reconstruction_target"] == "h1" else h0
    terms = [(h1[j][0] - target[s[4]][0].detach()).square().mean() if s[3] == 3
             else (h1[j][1] - target[s[4]][1].detach()).square().mean() for j, s in enumerate(samples) if j >= b]
    logits = []
    for i in range(b):
        qt, qi = (h1 if codes[i] == 1 else h0)[i][0], (h1 if codes[i] == 2 else h0)[i][1]
        prefixes: dict[int, list[tuple[Tensor, Tensor]]] = {}
        for pool, q in ((text, qt), (image, qi)):
            for li, layer in enumerate(pool.layers):
                pr = _prompt(pool, li, q)
                prefixes.setdefault(layer, []).append((pr[None, : pool.length // 2], pr[None, pool.length // 2:]))
        logits.append(method.head(encode(samples[i], Injection(prefixes=prefixes))[0]))
    return torch.stack(logits), torch.stack(terms).mean() if terms else None


def synthetic_batch(n: int, vocab: int, text_len: int, image_size: int, num_classes: int, missing: float,
                    seed: int) -> SimpleNamespace:
    """A Batch-like object (see cmml.data.dataset.Batch) with MAP dummies applied; ``missing`` split
    evenly between text-missing and image-missing (type ``both``)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(4, text_len + 1, (n,), generator=g)
    ids = torch.randint(5, vocab, (n, text_len), generator=g)
    ids[:, 0] = CLS
    mask = (torch.arange(text_len)[None] < lengths[:, None]).long()
    ids[torch.arange(n), lengths - 1] = SEP
    ids = ids * mask
    empty_ids = torch.zeros(text_len, dtype=torch.long)
    empty_ids[:2] = torch.tensor([CLS, SEP])
    empty_mask = (empty_ids != 0).long()
    k = int(n * missing)
    codes = torch.zeros(n, dtype=torch.long)
    perm = torch.randperm(n, generator=g)
    codes[perm[:k]] = 1
    codes[perm[k // 2:k]] = 2
    pix = torch.randn(n, 3, image_size, image_size, generator=g)
    pix[codes == 2] = 1.0
    ids[codes == 1], mask[codes == 1] = empty_ids, empty_mask
    return SimpleNamespace(pixel_values=pix, input_ids=ids, attention_mask=mask, codes=codes,
                           labels=torch.randint(0, num_classes, (n,), generator=g),
                           tasks=torch.zeros(n, dtype=torch.long),
                           empty_ids=empty_ids, empty_mask=empty_mask, empty_pixels=torch.ones(3, image_size, image_size),
                           pixel_mask=None, empty_pixel_mask=None)  # fixed-size images


def rebq_hparams(**over: Any) -> dict[str, Any]:
    """params.yaml's recommended rebq block for the tiny 4-layer backbone, with overrides."""
    hp = {"epochs": 4, "batch_size": 32, "lr": 0.003, "weight_decay": 0.01, "warmup": 0.1, "betas": [0.9, 0.98],
          "mask_old_logits": True, "bce_mean": "seen",
          "pool_size": 128, "prompt_length": 8, "memory_layers": [0, 1, 2], "text_layers": [0, 1, 2],
          "image_layers": [0, 1, 2], "alpha": 0.01, "reconstruction_target": "h1", "as_released": False,
          "memory_pool": True, "shared_pool": False}
    return hp | over


def _median_times(fns: list[Callable[[], Any]], repeats: int) -> list[float]:
    """Median wall time of each function, run interleaved so that load changes hit them alike."""
    times: list[list[float]] = [[] for _ in fns]
    for r in range(repeats + 1):
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            if r:  # the first round warms up
                ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]


def backbone_floor(method: RebQ, batch: Any) -> Callable[[], None]:
    """The backbone work alone of one RebQ step (default hyper-parameters), with constant zero
    prompts: H0 on the batch and its copies, H1 with grad on the missing samples and the copies,
    the no-grad H1 target of the complete samples, the final pass with grad, one backward."""
    bb, hp = method.backbone, method.hp
    complete = (batch.codes == 0).nonzero().squeeze(1)
    c = complete.numel()
    ids = torch.cat([batch.input_ids, batch.empty_ids.expand(c, -1), batch.input_ids[complete]])
    mask = torch.cat([batch.attention_mask, batch.empty_mask.expand(c, -1), batch.attention_mask[complete]])
    pix = torch.cat([batch.pixel_values, batch.pixel_values[complete], batch.empty_pixels.expand(c, -1, -1, -1)])
    rows = torch.cat([(batch.codes != 0).nonzero().squeeze(1), torch.arange(len(batch.codes), len(ids))])
    length, dim = hp["prompt_length"], bb.hidden_size

    def zeros(n: int, tokens: int) -> Tensor:
        return torch.zeros(n, tokens, dim, requires_grad=True)

    def step() -> None:
        with torch.no_grad():
            bb(ids, mask, pix)
            bb(ids[complete], mask[complete], pix[complete],
               Injection(deep_prompts={li: zeros(c, length) for li in hp["memory_layers"]}))
        h1 = bb(ids[rows], mask[rows], pix[rows],
                Injection(deep_prompts={li: zeros(len(rows), length) for li in hp["memory_layers"]}))
        kv = {li: [(zeros(len(batch.codes), length // 2), zeros(len(batch.codes), length // 2))] * 2
              for li in hp["text_layers"]}
        h2 = bb(batch.input_ids, batch.attention_mask, batch.pixel_values, Injection(prefixes=kv))
        (h1.text_cls.sum() + h1.image_cls.sum() + h2.text_cls.sum()).backward()
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    vocab, text_len, image_size, num_tasks = 200, 32, 32, 5
    tiny = {"hidden_size": 128, "num_layers": 4, "num_heads": 4, "intermediate_size": 256, "patch_size": 8}
    cfg = tiny_config(vocab_size=vocab, max_text_len=text_len, image_size=image_size, tiny=tiny)
    backbone = Backbone(new_vilt(cfg).eval())
    info = TaskInfo(offsets=tuple(range(0, 4 * num_tasks + 1, 4)), multilabel=False, scenario="class")
    batch = synthetic_batch(32, vocab, text_len, image_size, 4, missing=0.7, seed=0)
    last = num_tasks - 1
    batch.labels = batch.labels + info.offsets[last]
    rebq = RebQ(backbone, info, rebq_hparams())
    for t in range(num_tasks):
        rebq.begin_task(TaskContext(t, None, torch.device("cpu")))
    head = FineTune(backbone, info, rebq_hparams() | {"train_backbone": False})

    def stepper(method: Any) -> Callable[[], None]:
        opt = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-3)

        def step() -> None:
            loss, _ = method.loss(batch, last)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    rebq.train()
    head.train()
    t_rebq, t_head, t_floor = _median_times([stepper(rebq), stepper(head), backbone_floor(rebq, batch)], args.repeats)
    rebq.eval()
    with torch.no_grad():
        t_vec, t_ref = _median_times([lambda: rebq.predict(batch), lambda: reference_forward(rebq, batch, train=False)],
                                     max(3, args.repeats // 4))
    print(f"tiny ViLT (hidden 128, 4 layers), batch 32 (70% missing, both), task {last} of {num_tasks}, "
          f"{torch.get_num_threads()} thread(s)")
    print(f"train step: rebq {t_rebq * 1e3:.1f} ms, head-only fine-tune {t_head * 1e3:.1f} ms, "
          f"ratio {t_rebq / t_head:.2f}x (target <= 3.5x)")
    print(f"  backbone work alone (3 passes + backward, zero prompts): {t_floor * 1e3:.1f} ms "
          f"= {t_floor / t_head:.2f}x; "
          f"everything else in the rebq step: {100 * (t_rebq - t_floor) / t_rebq:.0f}%")
    print(f"eval forward: vectorised {t_vec * 1e3:.1f} ms, per-sample reference {t_ref * 1e3:.1f} ms, "
          f"speed-up {t_ref / t_vec:.1f}x")


if __name__ == "__main__":
    main()
