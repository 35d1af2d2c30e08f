"""RebQ and its CODA-style prompt pool on a tiny random ViLT (docs/rebq.md §3, §6)."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from cmml.errors import ConfigError
from cmml.methods.base import TaskContext, TaskInfo
from cmml.methods.prompt_pool import PromptPool
from cmml.methods.rebq import RebQ
from cmml.models.backbone import Backbone, new_vilt, tiny_config

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_rebq.py"
_spec = importlib.util.spec_from_file_location("bench_rebq", BENCH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)  # type: ignore[union-attr]

VOCAB, TEXT_LEN, IMAGE = 50, 12, 16
INFO = TaskInfo(offsets=(0, 3, 6, 9), multilabel=False, scenario="class")  # 3 tasks of 3 classes


def tctx(task: int) -> TaskContext:
    """A task context without data (the mechanics tested here do not read it)."""
    return TaskContext(task=task, data=None, device=torch.device("cpu"))


def tiny_backbone(init_std: float = 0.02) -> Backbone:
    torch.manual_seed(0)
    tiny = {"hidden_size": 32, "num_layers": 3, "num_heads": 4, "intermediate_size": 64, "patch_size": 8}
    cfg = tiny_config(vocab_size=VOCAB, max_text_len=TEXT_LEN, image_size=IMAGE, tiny=tiny)
    cfg.initializer_range = init_std
    return Backbone(new_vilt(cfg).eval())


@pytest.fixture(scope="module")
def backbone() -> Backbone:
    return tiny_backbone()


def hparams(**over: Any) -> dict[str, Any]:
    """The recommended block, scaled to the 3-layer, 32-dim test backbone (3 tasks x 4 rows)."""
    return bench.rebq_hparams(pool_size=12, memory_layers=[0, 1], text_layers=[0, 1], image_layers=[1, 2]) | over


def batch(n: int = 10, missing: float = 0.6, seed: int = 0, task: int = 0) -> Any:
    b = bench.synthetic_batch(n, VOCAB, TEXT_LEN, IMAGE, 3, missing=missing, seed=seed)
    b.labels = b.labels + INFO.offsets[task]
    return b


def make(backbone: Backbone, seed: int = 0, **over: Any) -> RebQ:
    torch.manual_seed(seed)
    return RebQ(backbone, INFO, hparams(**over))


def train(m: RebQ, task: int, steps: int, b: Any | None = None, lr: float = 1e-2) -> list[dict[str, float]]:
    """``steps`` AdamW steps on task ``task`` (begin_task included); the logs of every step."""
    m.begin_task(tctx(task))
    b = b if b is not None else batch(task=task, seed=task)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=lr, weight_decay=0.01)
    m.train()
    logs = []
    for _ in range(steps):
        loss, log = m.loss(b, task)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        logs.append(log)
    m.eval()
    return logs


def pools(m: RebQ) -> dict[str, PromptPool]:
    return dict(m.pools.items())


def test_frozen_backbone_bit_identical(backbone: Backbone) -> None:
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    m = make(backbone)
    train(m, 0, 3)
    train(m, 1, 3)
    assert not any(p.requires_grad for p in backbone.parameters())
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())


def test_only_current_task_rows_and_head_change(backbone: Backbone) -> None:
    m = make(backbone)
    train(m, 0, 3)
    m.begin_task(tctx(1))
    trainable = {k for k, p in m.named_parameters() if p.requires_grad}
    expected = {f"pools.{name}.{kind}.1" for name in m.pools for kind in "pka"} | {"head.weight", "head.bias"}
    assert trainable == expected
    before = m.trainable_state()
    train(m, 1, 3)
    after = m.trainable_state()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == expected
    assert all(int(after[f"pools.{name}.learned_tasks"]) == 2 for name in m.pools)


def test_new_rows_orthogonal_to_trained_rows(backbone: Backbone) -> None:
    m = make(backbone)
    train(m, 0, 5)
    train(m, 1, 5)
    m.begin_task(tctx(2))
    for pool in pools(m).values():
        for blocks in (pool.p, pool.k, pool.a):
            old = torch.cat([blocks[0], blocks[1]], dim=1).flatten(2).double()
            new = blocks[2].flatten(2).double()
            assert old.norm(dim=-1).min() > 0.5  # trained, far from zero
            assert (old @ new.transpose(1, 2)).abs().max() < 1e-5
            gram = new @ new.transpose(1, 2)
            assert (gram - torch.eye(gram.shape[-1], dtype=gram.dtype)).abs().max() < 1e-5


def test_reconstruction_loss_decreases(backbone: Backbone) -> None:
    m = make(backbone, alpha=1.0)
    logs = train(m, 0, 50, batch(n=8, missing=0.5, seed=3))
    assert logs[-1]["rec"] < 0.5 * logs[0]["rec"]


def test_as_released_rows_stay_zero_with_zero_gradients(backbone: Backbone) -> None:
    m = make(backbone, as_released=True)
    train(m, 0, 3)
    m.begin_task(tctx(1))
    rows = [blocks[1] for pool in pools(m).values() for blocks in (pool.p, pool.k, pool.a)]
    assert all(p.requires_grad and not p.any() for p in rows)
    b = batch(task=1, seed=1)
    loss, _ = m.loss(b, 1)
    loss.backward()
    assert all(p.grad is not None and not p.grad.any() for p in rows)
    train(m, 1, 5, b)
    assert all(not p.any() for p in rows)
    assert not any(blocks[0].requires_grad for pool in pools(m).values() for blocks in (pool.p, pool.k, pool.a))


@pytest.mark.parametrize("over", [{}, {"reconstruction_target": "h0"}, {"shared_pool": True, "image_layers": [0, 1]},
                                  {"memory_pool": False}, {"alpha": 0.0}, {"as_released": True}],
                         ids=["default", "h0", "shared", "no_memory", "alpha0", "released"])
def test_vectorised_equals_per_sample_reference(backbone: Backbone, over: dict[str, Any]) -> None:
    m = make(backbone, **over)
    train(m, 0, 3)
    train(m, 1, 3)
    b = batch(seed=7, task=1)
    with torch.no_grad():
        ref_logits, _ = bench.reference_forward(m, b, train=False)
        assert (m.predict(b) - ref_logits).abs().max() < 1e-5
        ref_logits, ref_rec = bench.reference_forward(m, b, train=True)
        loss, log = m.loss(b, 1)
    ref_loss = m.classification_loss(ref_logits, b.labels, 1)
    if ref_rec is not None:
        assert abs(log["rec"] - float(ref_rec)) < 1e-5
        ref_loss = ref_loss + m.hp["alpha"] * ref_rec
    assert ("rec" in log) == (ref_rec is not None)
    assert abs(float(loss) - float(ref_loss)) < 1e-5


def count_rows(m: RebQ, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the batch size of every backbone call."""
    sizes: list[int] = []
    forward = m.backbone.forward

    def wrapped(input_ids, *args, **kwargs):
        sizes.append(input_ids.shape[0])
        return forward(input_ids, *args, **kwargs)

    monkeypatch.setattr(m.backbone, "forward", wrapped)
    return sizes


def test_copies_only_in_training(backbone: Backbone, monkeypatch: pytest.MonkeyPatch) -> None:
    m = make(backbone)
    m.begin_task(tctx(0))
    b = batch(n=10, missing=0.6)  # 3 text-missing, 3 image-missing, 4 complete
    sizes = count_rows(m, monkeypatch)
    m.predict(b)
    assert sizes == [10, 6, 10]  # H0, H1 of the missing samples, final: no copies
    sizes.clear()
    m.train()
    m.loss(b, 0)
    assert sizes == [18, 14, 4, 10]  # H0 with 2x4 copies, H1 with grad, no-grad H1 target, final


def test_checkpoint_round_trip(backbone: Backbone) -> None:
    m = make(backbone)
    train(m, 0, 3)
    buf = io.BytesIO()
    torch.save(m.trainable_state(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    fresh = make(backbone, seed=123)
    fresh.load_trainable_state(state, "memory")
    b = batch(seed=5)
    assert torch.equal(fresh.predict(b), m.predict(b))
    for model in (m, fresh):
        torch.manual_seed(9)
        model.begin_task(tctx(1))
    new, old = fresh.trainable_state(), m.trainable_state()
    assert all(torch.equal(new[k], old[k]) for k in old)
    assert int(new["pools.memory.learned_tasks"]) == 2 and new["pools.text.p.1"].any()
    train(fresh, 1, 2)


def test_ablation_switches(backbone: Backbone, monkeypatch: pytest.MonkeyPatch) -> None:
    assert set(make(backbone).pools) == {"memory", "text", "image"}
    assert set(make(backbone, shared_pool=True, image_layers=[0, 1]).pools) == {"memory", "shared"}
    b = batch(n=10, missing=0.6)
    m = make(backbone, memory_pool=False)
    assert set(m.pools) == {"text", "image"}
    m.begin_task(tctx(0))
    sizes = count_rows(m, monkeypatch)
    _, log = m.loss(b, 0)
    assert sizes == [10, 10] and "rec" not in log  # H0 queries of the dummy inputs, final pass
    q_txt, q_img, _ = m.queries(b)
    h0 = m.backbone(b.input_ids, b.attention_mask, b.pixel_values)
    assert torch.equal(q_txt, h0.text_cls) and torch.equal(q_img, h0.image_cls)
    m = make(backbone, alpha=0.0)
    m.begin_task(tctx(0))
    sizes = count_rows(m, monkeypatch)
    _, log = m.loss(b, 0)
    assert sizes == [10, 6, 10] and "rec" not in log  # no copies; memory pool still reconstructs


@pytest.mark.parametrize("over, key", [
    ({"bogus": 1}, "bogus"), ({"pool_size": "8"}, "pool_size"), ({"alpha": -0.1}, "alpha"),
    ({"prompt_length": 7}, "prompt_length"), ({"reconstruction_target": "h2"}, "reconstruction_target"),
    ({"memory_layers": [1, 0]}, "memory_layers"), ({"text_layers": []}, "text_layers"),
    ({"image_layers": [True]}, "image_layers"),
    ({"as_released": True, "reconstruction_target": "h0"}, "reconstruction_target"),
    ({"shared_pool": True}, "image_layers"), ({"lr": -1.0}, "lr"),
])
def test_invalid_hparams(over: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        RebQ.resolve_hparams({"method": "rebq", **hparams(**over)}, "cmml.methods.r")


@pytest.mark.parametrize("over, key", [({"image_layers": [1, 3]}, "image_layers"), ({"pool_size": 2}, "pool_size"),
                                       ({"pool_size": 36}, "pool_size")])
def test_invalid_for_backbone(backbone: Backbone, over: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        make(backbone, **over)


def test_reconstructed_query_moves_towards_complete_query() -> None:
    """Synthetic stand-in for the embedded-benchmark check (pending: pretrained backbone + stage CLI).

    At the default init (std 0.02) a random ViLT maps every input to nearly the same [CLS]
    (cosine > 0.9999), so this uses std 0.4, where a complete sample and its text-dropped copy
    differ (cosine about 0.86). After training on complete samples, the reconstructed text query
    of the text-dropped samples is closer (cosine) to the complete samples' query than the
    dummy-input query is.
    """
    torch.manual_seed(0)
    m = RebQ(tiny_backbone(init_std=0.4), INFO, hparams(alpha=1.0, reconstruction_target="h0"))
    complete = batch(n=8, missing=0.0, seed=11)
    train(m, 0, 30, complete)
    dropped = batch(n=8, missing=0.0, seed=11)
    dropped.codes[:] = 1
    dropped.input_ids[:], dropped.attention_mask[:] = dropped.empty_ids, dropped.empty_mask
    with torch.no_grad():
        target = m.backbone(complete.input_ids, complete.attention_mask, complete.pixel_values).text_cls
        dummy = m.backbone(dropped.input_ids, dropped.attention_mask, dropped.pixel_values).text_cls
        rebuilt = m.queries(dropped)[0]
    before, after = F.cosine_similarity(dummy, target).mean(), F.cosine_similarity(rebuilt, target).mean()
    assert after > before + 0.5 * (1 - before)


def test_as_released_old_rows_decay_like_adamw() -> None:
    """Released code: task-0 rows stay in AdamW with zero gradients, so weight decay shrinks them."""
    bb = tiny_backbone()
    released = make(bb, as_released=True)
    train(released, 0, 2)
    released.begin_task(tctx(1))
    before = [p.detach().clone() for pool in released.pools.values() for p in (*pool.p[:1], *pool.k[:1], *pool.a[:1])]
    opt = released.configure_optimizer()
    loss, _ = released.loss(batch(task=1, seed=1), 1)
    opt.zero_grad()
    loss.backward()
    opt.step()
    lr, wd = opt.param_groups[0]["lr"], opt.param_groups[0]["weight_decay"]
    released.after_optimizer_step(opt)
    after = [p.detach() for pool in released.pools.values() for p in (*pool.p[:1], *pool.k[:1], *pool.a[:1])]
    assert all(torch.allclose(a, b * (1 - lr * wd)) for a, b in zip(after, before))
    fixed = make(bb)
    train(fixed, 0, 2)
    fixed.begin_task(tctx(1))
    kept = [p.detach().clone() for pool in fixed.pools.values() for p in pool.p[:1]]
    fixed.after_optimizer_step(fixed.configure_optimizer())
    assert all(torch.equal(a, b) for a, b in zip(kept, (p for pool in fixed.pools.values() for p in pool.p[:1])))
    assert fixed.configure_optimizer().param_groups[0]["betas"] == (0.9, 0.98)


def test_evaluation_reuses_the_frozen_h0_pass_exactly(backbone: Backbone) -> None:
    """RebQ's H0 query pass is reused across checkpoints in evaluation; the logits are unchanged."""
    from cmml.models.backbone import reuse_frozen_passes

    first, second = make(backbone), make(backbone, seed=1)
    train(second, 0, 2)
    first.begin_task(tctx(0))  # the untrained row
    first.eval()
    plain = [m.predict(batch(seed=7)) for m in (first, second)]
    store: list = []
    for m, want in zip((first, second), plain):
        with reuse_frozen_passes(store):
            assert torch.equal(m.predict(batch(seed=7)), want)
    assert len(store) == 1
