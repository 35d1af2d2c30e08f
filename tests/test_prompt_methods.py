"""The prompt-based continual baselines (CODA-Prompt, L2P, DualPrompt, MAP) on a tiny random ViLT."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from cmml.errors import ConfigError
from cmml.methods.base import Method, TaskContext, TaskInfo
from cmml.methods.coda_prompt import CodaPrompt
from cmml.methods.dualprompt import DualPrompt
from cmml.methods.l2p import L2P
from cmml.methods.map_prompt import MapPrompt
from cmml.methods.prompt_pool import KeyedPrompts
from cmml.models.backbone import Backbone, Injection, new_vilt, tiny_config

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_rebq.py"
_spec = importlib.util.spec_from_file_location("bench_rebq", BENCH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)  # type: ignore[union-attr]

VOCAB, TEXT_LEN, IMAGE = 50, 12, 16
INFO = TaskInfo(offsets=(0, 3, 6, 9), multilabel=False, scenario="class")  # 3 tasks of 3 classes
COMMON = {"epochs": 1, "batch_size": 8, "lr": 0.003, "weight_decay": 0.0, "warmup": 0.1, "betas": [0.9, 0.999],
          "mask_old_logits": True, "bce_mean": "seen"}
HPARAMS: dict[type[Method], dict[str, Any]] = {
    CodaPrompt: {"pool_size": 12, "prompt_length": 4, "layers": [0, 1], "ortho_mu": 0.0},
    L2P: {"pool_size": 6, "prompt_length": 3, "top_k": 2, "pull_coeff": 0.1, "batchwise_prompt": True},
    DualPrompt: {"g_length": 2, "g_layers": [0, 1], "e_length": 3, "e_layers": [1, 2], "pull_coeff": 1.0},
    MapPrompt: {"prompt_length": 4, "layers": [0, 1], "position": "input", "head": "mlp"},
}


def tctx(task: int) -> TaskContext:
    """A task context without data (the mechanics tested here do not read it)."""
    return TaskContext(task=task, data=None, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def backbone() -> Backbone:
    torch.manual_seed(0)
    tiny = {"hidden_size": 32, "num_layers": 3, "num_heads": 4, "intermediate_size": 64, "patch_size": 8}
    cfg = tiny_config(vocab_size=VOCAB, max_text_len=TEXT_LEN, image_size=IMAGE, tiny=tiny)
    cfg.initializer_range = 0.4  # distinct [CLS] queries per input (at 0.02 they are nearly identical)
    return Backbone(new_vilt(cfg).eval())


def batch(n: int = 10, missing: float = 0.6, seed: int = 0, task: int = 0) -> Any:
    b = bench.synthetic_batch(n, VOCAB, TEXT_LEN, IMAGE, 3, missing=missing, seed=seed)
    b.labels = b.labels + INFO.offsets[task]
    b.tasks = torch.full_like(b.tasks, task)
    return b


def make(cls: type[Method], backbone: Backbone, seed: int = 0, **over: Any) -> Any:
    torch.manual_seed(seed)
    return cls(backbone, INFO, COMMON | HPARAMS[cls] | over)


def train(m: Method, task: int, steps: int, b: Any | None = None, lr: float = 1e-2) -> list[dict[str, float]]:
    """``steps`` optimiser steps on task ``task`` (begin_task included); the logs of every step."""
    m.begin_task(tctx(task))
    b = b if b is not None else batch(task=task, seed=task)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
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


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


@pytest.mark.parametrize("cls", list(HPARAMS), ids=lambda c: c.NAME)
def test_checkpoint_round_trip_and_frozen_backbone(backbone: Backbone, cls: type[Method]) -> None:
    frozen = {k: v.clone() for k, v in backbone.state_dict().items()}
    m = make(cls, backbone)
    train(m, 0, 3)
    train(m, 1, 2)
    assert all(torch.equal(frozen[k], v) for k, v in backbone.state_dict().items())
    assert not any(k.startswith("backbone.") for k in m.trainable_state())
    buf = io.BytesIO()
    torch.save(m.trainable_state(), buf)
    buf.seek(0)
    fresh = make(cls, backbone, seed=123)
    fresh.load_trainable_state(torch.load(buf, weights_only=True), "memory")
    b = batch(seed=5, task=1)
    assert torch.equal(fresh.predict(b), m.predict(b))
    train(fresh, 2, 1)  # the loaded state continues with the next task


# ---- CODA-Prompt ---------------------------------------------------------------------

def test_coda_new_block_orthogonal_old_blocks_frozen(backbone: Backbone) -> None:
    m = make(CodaPrompt, backbone)
    train(m, 0, 5)
    m.begin_task(tctx(1))
    pool = m.pool
    for blocks in (pool.p, pool.k, pool.a):
        old, new = blocks[0].flatten(2).double(), blocks[1].flatten(2).double()
        assert (old @ new.transpose(1, 2)).abs().max() < 1e-6
        assert not blocks[0].requires_grad and blocks[1].requires_grad and not blocks[2].requires_grad
    old = {k: v.clone() for k, v in m.trainable_state().items()}
    m.zero_grad(set_to_none=True)
    loss, _ = m.loss(batch(task=1, seed=1), 1)
    loss.backward()
    assert all(blocks[0].grad is None for blocks in (pool.p, pool.k, pool.a))
    assert all(blocks[1].grad is not None and blocks[1].grad.abs().sum() > 0 for blocks in (pool.p, pool.k, pool.a))
    train(m, 1, 3)
    assert changed(old, m.trainable_state()) == {"pool.p.1", "pool.k.1", "pool.a.1", "head.weight", "head.bias"}
    assert int(m.pool.learned_tasks) == 2


def test_coda_uses_every_learned_block(backbone: Backbone) -> None:
    m = make(CodaPrompt, backbone)
    train(m, 0, 2)
    train(m, 1, 2)
    b = batch(seed=3)
    before = m.predict(b)
    with torch.no_grad():
        m.pool.p[0].zero_()  # task 0's components still shape the prompts of a task-1 model
    assert not torch.equal(before, m.predict(b))


def test_coda_ortho_loss(backbone: Backbone) -> None:
    m = make(CodaPrompt, backbone, ortho_mu=1.0)
    logs = train(m, 0, 3, lr=0.05)
    assert logs[0]["ortho"] < 1e-10 < logs[-1]["ortho"]  # rows start orthonormal, then drift
    assert "ortho" not in train(make(CodaPrompt, backbone), 0, 1)[0]


@pytest.mark.parametrize("over, key", [
    ({"pool_size": 0}, "pool_size"), ({"prompt_length": 3}, "prompt_length"), ({"layers": [1, 0]}, "layers"),
    ({"layers": []}, "layers"), ({"ortho_mu": -1.0}, "ortho_mu"), ({"bogus": 1}, "bogus"),
])
def test_coda_invalid_hparams(over: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        CodaPrompt.resolve_hparams({"method": "coda_prompt", **COMMON, **HPARAMS[CodaPrompt], **over}, "cmml.methods.c")


@pytest.mark.parametrize("over, key", [({"layers": [1, 3]}, "layers"), ({"pool_size": 2}, "pool_size"),
                                       ({"pool_size": 36}, "pool_size")])
def test_coda_invalid_for_backbone(backbone: Backbone, over: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        make(CodaPrompt, backbone, **over)


# ---- L2P -----------------------------------------------------------------------------

def query(m: Method, b: Any) -> torch.Tensor:
    return m.backbone(b.input_ids, b.attention_mask, b.pixel_values).text_cls


def test_l2p_top_k_selection(backbone: Backbone) -> None:
    m = make(L2P, backbone, batchwise_prompt=False).eval()
    b = batch(n=8, seed=2)
    with torch.no_grad():
        sim = F.cosine_similarity(query(m, b)[:, None], m.pool.keys[None], dim=-1)
        _, got_sim, idx = m.prompted(b)
    assert torch.allclose(got_sim, sim, atol=1e-6)
    assert torch.equal(idx.sort(1).values, sim.topk(2, dim=1).indices.sort(1).values)
    before = m.predict(b)
    unused = sorted(set(range(6)) - set(idx.flatten().tolist()))
    assert unused, "every prompt picked: choose another seed"
    with torch.no_grad():
        m.pool.prompts[unused] = 0.0  # prompts nobody selected do not matter ...
    assert torch.equal(before, m.predict(b))
    with torch.no_grad():
        m.pool.prompts[idx[0, 0]] += 1.0  # ... a selected one does
    assert not torch.equal(before, m.predict(b))


def test_l2p_batchwise_vote_in_training_only(backbone: Backbone, monkeypatch: pytest.MonkeyPatch) -> None:
    m = make(L2P, backbone)
    sim = torch.tensor([[0.9, 0.8, 0.1, 0.0, 0.0, 0.0], [0.9, 0.1, 0.8, 0.0, 0.0, 0.0], [0.9, 0.7, 0.0, 0.0, 0.8, 0.0]])
    assert m.select(sim, vote=True).tolist() == [[0, 1]] * 3  # 0 chosen thrice, 1 twice (2 and 4: once)
    assert m.select(sim, vote=False).tolist() == [[0, 1], [0, 2], [0, 4]]
    votes: list[bool] = []
    select = m.select
    monkeypatch.setattr(m, "select", lambda s, vote: votes.append(vote) or select(s, vote))
    b = batch(n=4)
    m.train()
    m.loss(b, 0)
    m.predict(b)  # per sample, even in train mode
    assert votes == [True, False]


def test_l2p_pull_loss_pulls_selected_keys(backbone: Backbone) -> None:
    sim = torch.tensor([[0.5, -0.5, 0.0], [0.2, 0.4, 1.0]])
    idx = torch.tensor([[0, 2], [2, 1]])
    assert torch.isclose(KeyedPrompts.pull_loss(sim, idx), torch.tensor(((0.5 + 1.0) + (0.0 + 0.6)) / 2))
    m = make(L2P, backbone, batchwise_prompt=False, pull_coeff=1.0)
    b = batch(n=8, seed=4)
    m.train()
    _, _, idx = m.prompted(b)
    loss, log = m.loss(b, 0)
    loss.backward()
    picked = set(idx.flatten().tolist())
    grads = m.pool.keys.grad.abs().sum(1)
    assert all((grads[i] > 0) == (i in picked) for i in range(6))  # only selected keys are pulled
    logs = train(m, 0, 20, b, lr=0.05)
    assert logs[-1]["pull"] < 0.5 * logs[0]["pull"]


@pytest.mark.parametrize("over, key", [({"top_k": 7}, "top_k"), ({"top_k": 0}, "top_k"), ({"pool_size": 0}, "pool_size"),
                                       ({"prompt_length": 0}, "prompt_length"), ({"pull_coeff": -0.1}, "pull_coeff"),
                                       ({"batchwise_prompt": 1}, "batchwise_prompt")])
def test_l2p_invalid_hparams(over: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        L2P.resolve_hparams({"method": "l2p", **COMMON, **HPARAMS[L2P], **over}, "cmml.methods.l")


# ---- DualPrompt ----------------------------------------------------------------------

def injections(m: Method, monkeypatch: pytest.MonkeyPatch) -> list[Injection | None]:
    """Record the injection of every backbone call."""
    seen: list[Injection | None] = []
    forward = m.backbone.forward

    def wrapped(ids, mask, pix, inject=None, pixel_mask=None):
        seen.append(inject)
        return forward(ids, mask, pix, inject, pixel_mask=pixel_mask)

    monkeypatch.setattr(m.backbone, "forward", wrapped)
    return seen


def test_dualprompt_g_and_e_prefixes(backbone: Backbone, monkeypatch: pytest.MonkeyPatch) -> None:
    m = make(DualPrompt, backbone)
    m.begin_task(tctx(0))
    m.begin_task(tctx(1))
    seen = injections(m, monkeypatch)
    m.train()
    m.loss(batch(n=4, task=1), 1)
    assert seen[0] is None  # the frozen query pass
    pre = seen[1].prefixes
    assert sorted(pre) == [0, 1, 2] and [len(pre[layer]) for layer in (0, 1, 2)] == [1, 2, 1]
    g0_k, g0_v = pre[0][0]
    assert torch.equal(g0_k[0], m.g_prompt[0, :2]) and torch.equal(g0_v[3], m.g_prompt[0, 2:])
    e2_k, e2_v = pre[2][0]  # layer 2 is E's second layer; training uses the true task's (1) E-prompt
    assert e2_k.shape == (4, 3, 32) and torch.equal(e2_k[2], m.e_prompts.prompts[1, 1, :3])
    assert torch.equal(e2_v[0], m.e_prompts.prompts[1, 1, 3:])


def test_dualprompt_trains_only_the_task_e_prompt_and_key(backbone: Backbone) -> None:
    m = make(DualPrompt, backbone)
    train(m, 0, 2)
    before = {k: v.clone() for k, v in m.trainable_state().items()}
    m.begin_task(tctx(1))
    m.zero_grad(set_to_none=True)
    loss, _ = m.loss(batch(task=1, seed=1), 1)
    loss.backward()
    for grad in (m.e_prompts.prompts.grad, m.e_prompts.keys.grad):
        rows = grad.flatten(1).abs().sum(1)
        assert rows[1] > 0 and rows[0] == 0 and rows[2] == 0
    assert m.g_prompt.grad.abs().sum() > 0  # shared, trained on every task
    train(m, 1, 2)
    after = m.trainable_state()
    assert changed(before, after) == {"g_prompt", "e_prompts.prompts", "e_prompts.keys", "head.weight", "head.bias",
                                      "learned_tasks"}
    for k in ("e_prompts.prompts", "e_prompts.keys"):
        assert torch.equal(before[k][0], after[k][0]) and torch.equal(before[k][2], after[k][2])


def test_dualprompt_test_time_key_selection(backbone: Backbone) -> None:
    m = make(DualPrompt, backbone)
    b = batch(n=6, seed=6)
    q = query(m, b).detach()
    m.begin_task(tctx(0))
    with torch.no_grad():
        m.e_prompts.keys[2] = q[0]  # an unlearnt task's key is never chosen
        assert m.prompted(b, None)[2].tolist() == [0] * 6
        m.begin_task(tctx(1))
        m.begin_task(tctx(2))
        m.e_prompts.keys[1] = q[1]
        m.e_prompts.keys[0] = -q.mean(0)
        _, sim, idx = m.prompted(b, None)
    assert idx.tolist() == sim.argmax(1).tolist() and idx[0] == 2 and idx[1] == 1
    with torch.no_grad():
        expected = m.prompted(b, 2)[0][0]  # sample 0 evaluates as if it had been trained on task 2
        assert torch.allclose(m.features(b)[0], expected, atol=1e-6)


@pytest.mark.parametrize("over, key", [({"g_length": 0}, "g_length"), ({"e_length": -1}, "e_length"),
                                       ({"g_layers": [0, 0]}, "g_layers"), ({"e_layers": "1"}, "e_layers"),
                                       ({"pull_coeff": -1.0}, "pull_coeff")])
def test_dualprompt_invalid_hparams(over: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        DualPrompt.resolve_hparams({"method": "dualprompt", **COMMON, **HPARAMS[DualPrompt], **over}, "cmml.methods.d")


def test_dualprompt_layers_checked_against_backbone(backbone: Backbone) -> None:
    with pytest.raises(ConfigError, match="e_layers"):
        make(DualPrompt, backbone, e_layers=[2, 3])


# ---- MAP -----------------------------------------------------------------------------

def test_map_init_marks() -> None:
    bb = Backbone(new_vilt(tiny_config(VOCAB, TEXT_LEN, IMAGE, {"hidden_size": 32, "num_layers": 3, "num_heads": 4,
                                                                 "intermediate_size": 64, "patch_size": 8})))
    for position, length, marks in (("input", 4, [[0], [2], [1]]), ("attention", 6, [[0, 3], [2, 5], [1, 4]])):
        p = make(MapPrompt, bb, position=position, prompt_length=length).prompts
        for code in range(3):
            ones = (p[code] == 1).all(-1).all(0).nonzero().flatten().tolist()
            assert ones == marks[code] and p[code].sum() == len(marks[code]) * 2 * 32


@pytest.mark.parametrize("position", ["input", "attention"])
def test_map_prompt_set_chosen_by_missing_code(backbone: Backbone, position: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    m = make(MapPrompt, backbone, position=position, prompt_length=6)
    b = batch(n=9, missing=0.67, seed=8)
    codes = b.codes.tolist()
    assert sorted(set(codes)) == [0, 1, 2]
    with torch.no_grad():
        m.prompts.normal_()
    seen = injections(m, monkeypatch)
    before = m.predict(b)
    inj = seen[0]
    for li, layer in enumerate((0, 1)):
        got = inj.deep_prompts[layer] if position == "input" else torch.cat(inj.prefixes[layer][0], dim=1)
        for i, code in enumerate(codes):
            assert torch.equal(got[i], m.prompts[code, li])
    with torch.no_grad():
        m.prompts[1] += 1.0  # the text-missing set changes the text-missing samples only
    after = m.predict(b)
    moved = (after - before).abs().amax(1) > 0
    assert moved.tolist() == [c == 1 for c in codes]


def test_map_heads_and_gradients(backbone: Backbone) -> None:
    m = make(MapPrompt, backbone)
    assert [type(x).__name__ for x in m.head] == ["Linear", "Tanh", "Linear", "LayerNorm", "GELU", "Linear"]
    assert isinstance(make(MapPrompt, backbone, head="linear").head, torch.nn.Linear)
    b = batch(n=6, missing=0.0, seed=1)  # complete samples only: only the complete set learns
    m.train()
    loss, _ = m.loss(b, 0)
    loss.backward()
    per_set = m.prompts.grad.flatten(1).abs().sum(1)
    assert per_set[0] > 0 and per_set[1] == 0 and per_set[2] == 0


@pytest.mark.parametrize("over, key", [({"position": "output"}, "position"), ({"head": "pooler"}, "head"),
                                       ({"prompt_length": 2}, "prompt_length"),
                                       ({"position": "attention", "prompt_length": 7}, "prompt_length"),
                                       ({"layers": [-1]}, "layers")])
def test_map_invalid_hparams(over: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        MapPrompt.resolve_hparams({"method": "map_prompt", **COMMON, **HPARAMS[MapPrompt], **over}, "cmml.methods.m")


@pytest.mark.parametrize("cls", [CodaPrompt, L2P, DualPrompt], ids=lambda c: c.NAME)
def test_evaluation_reuses_the_frozen_query_pass_exactly(backbone: Backbone, cls: type[Method],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Two checkpoints predicting inside one reuse block: the second makes no query pass of its own,
    and its logits equal those of a prediction that recomputes everything."""
    from cmml.models.backbone import reuse_frozen_passes

    first, second = make(cls, backbone), make(cls, backbone, seed=1)
    train(second, 0, 2)
    first.begin_task(tctx(0))  # the untrained row
    first.eval()
    b = batch(seed=7)
    plain = [m.predict(b) for m in (first, second)]
    calls: list[Injection | None] = []
    real = Backbone.forward
    monkeypatch.setattr(Backbone, "forward", lambda self, *a, **k: calls.append(k.get("inject")) or real(self, *a, **k))
    store: list = []
    reused = []
    for m in (first, second):
        with reuse_frozen_passes(store):
            reused.append(m.predict(batch(seed=7)))  # a fresh batch object with the same content
    assert [torch.equal(a, b) for a, b in zip(plain, reused)] == [True, True]
    assert len(store) == 1 and len(calls) == 3  # one query pass for both, one prompted pass each
    with reuse_frozen_passes(store):
        other = second.predict(batch(seed=8))  # other inputs: computed, not reused
    assert len(store) == 2 and not torch.equal(other, reused[1])
