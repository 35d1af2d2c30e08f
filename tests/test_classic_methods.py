"""The classic continual baselines EWC, LwF and ER on a tiny random ViLT and small in-memory splits."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from cmml.data.dataset import Batch
from cmml.data.modality import MAP_MODALITIES, codes_to_present
from cmml.errors import ConfigError
from cmml.methods.base import Method, TaskContext, TaskInfo
from cmml.methods.er import ER, reservoir_slots
from cmml.methods.ewc import EWC, buffer_key
from cmml.methods.lwf import LwF, distillation
from cmml.models.backbone import Backbone, new_vilt, tiny_config
from cmml.train.checkpoint import RunContext, load_checkpoint, save_checkpoint

VOCAB, TEXT_LEN, IMAGE = 40, 10, 16
INFO = TaskInfo((0, 2, 4, 6), multilabel=False, scenario="class")
COMMON = {"epochs": 1, "batch_size": 4, "lr": 0.01, "weight_decay": 0.0, "warmup": 0.0, "betas": [0.9, 0.999],
          "mask_old_logits": False, "bce_mean": "seen", "train_backbone": False}
HP: dict[type[Method], dict[str, Any]] = {
    EWC: {**COMMON, "ewc_lambda": 10.0, "gamma": 1.0, "fisher_samples": 0},
    LwF: {**COMMON, "alpha": 1.0, "temperature": 2.0},
    ER: {**COMMON, "buffer_size": 5, "replay_batch_size": 3},
}


def backbone() -> Backbone:
    torch.manual_seed(0)
    tiny = {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 64, "patch_size": 8}
    cfg = tiny_config(VOCAB, TEXT_LEN, IMAGE, tiny)
    cfg.initializer_range = 0.4  # distinct features per input
    return Backbone(new_vilt(cfg).eval())


@dataclass
class Split:
    """A stand-in for ``SplitData``: per-row tensors, ``batch(idx)`` collates a real :class:`Batch`
    (missing fill applied, text trimmed to the longest row as the real collate does)."""

    pixel_values: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    present: torch.Tensor
    tasks: torch.Tensor

    def __len__(self) -> int:
        return int(self.tasks.shape[0])

    def batch(self, idx: torch.Tensor) -> Batch:
        idx = torch.as_tensor(idx, dtype=torch.int64)
        mask = self.attention_mask[idx]
        length = max(int(mask.sum(1).max()), 2)
        empty_ids = torch.zeros(TEXT_LEN, dtype=torch.int64)
        empty_ids[:2] = torch.tensor([1, 2])
        return Batch(pixel_values=self.pixel_values[idx], input_ids=self.input_ids[idx, :length],
                     attention_mask=mask[:, :length], labels=self.labels[idx], present=self.present[idx],
                     tasks=self.tasks[idx], empty_ids=empty_ids[:length], empty_mask=(empty_ids != 0).long()[:length],
                     empty_pixels=torch.ones(3, IMAGE, IMAGE), modalities=MAP_MODALITIES)


def split(task: int, n: int = 8, seed: int = 0, info: TaskInfo = INFO) -> Split:
    """``n`` samples of ``task``: random texts of varying length, a third text- and a third image-missing."""
    g = torch.Generator().manual_seed(1000 * task + seed)
    lengths = torch.randint(3, TEXT_LEN + 1, (n,), generator=g)
    mask = (torch.arange(TEXT_LEN)[None] < lengths[:, None]).long()
    ids = torch.randint(5, VOCAB, (n, TEXT_LEN), generator=g) * mask
    codes = torch.arange(n) % 3
    ids[codes == 1], mask[codes == 1] = torch.tensor([1, 2] + [0] * (TEXT_LEN - 2)), (torch.arange(TEXT_LEN) < 2).long()
    pix = torch.randn(n, 3, IMAGE, IMAGE, generator=g)
    pix[codes == 2] = 1.0
    lo, hi = info.offsets[task], info.offsets[task + 1]
    if info.multilabel:
        labels = torch.zeros(n, info.num_classes)
        labels[torch.arange(n), torch.randint(lo, hi, (n,), generator=g)] = 1.0
    else:
        labels = torch.randint(lo, hi, (n,), generator=g)
    return Split(pix, ids, mask, labels, codes_to_present(codes), torch.full((n,), task))


def ctx(task: int, data: Split | None = None, seed: int = 0, previous: Method | None = None) -> TaskContext:
    return TaskContext(task=task, data=data, device=torch.device("cpu"), previous=previous,
                       generator=torch.Generator().manual_seed(seed))


def train(m: Method, task: int, data: Split, steps: int = 4, previous: Method | None = None) -> TaskContext:
    """A few AdamW steps on ``data`` (through ``replay``), then ``end_task``; the context used."""
    c = ctx(task, data, previous=previous)
    m.begin_task(c)
    opt = m.configure_optimizer()
    m.train()
    for _ in range(steps):
        loss, _ = m.loss(m.replay(data.batch(torch.arange(len(data))), c), task)
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    m.end_task(c)
    return c


def run_context(tmp_path: Path, cls: type[Method]) -> RunContext:
    return RunContext(run=cls.NAME, method_name=cls.NAME, method_cls=cls, setting="both70", seed=0, hp=HP[cls],
                      data_dir=tmp_path, tasks_dir=tmp_path, missing_dir=tmp_path, backbone_dir=tmp_path,
                      backbone_sha256="ab" * 32, info=INFO, tasks=None, tokenizer=None, fill="map", joint=False)


def round_trip(tmp_path: Path, m: Method, task: int) -> Method:
    """``m``'s checkpoint of ``task`` loaded into a freshly built method of the same class."""
    rc = run_context(tmp_path, type(m))
    save_checkpoint(tmp_path / "ck.pt", rc, m, task)
    fresh = type(m)(backbone(), m.info, m.hp)
    load_checkpoint(tmp_path / "ck.pt", rc, fresh, task)
    state = fresh.trainable_state()
    assert set(state) == set(m.trainable_state())
    assert all(torch.equal(v, state[k]) for k, v in m.trainable_state().items())
    return fresh


@pytest.mark.parametrize(("cls", "key", "value", "message"), [
    (EWC, "ewc_lambda", -1.0, "ewc_lambda must be >= 0"),
    (EWC, "gamma", 1.5, "gamma must be in"),
    (EWC, "fisher_samples", -1, "fisher_samples must be >= 0"),
    (LwF, "alpha", -0.5, "alpha must be >= 0"),
    (LwF, "temperature", 0.0, "temperature must be > 0"),
    (ER, "buffer_size", 0, "buffer_size must be positive"),
    (ER, "replay_batch_size", 0, "replay_batch_size must be positive"),
    (ER, "mask_old_logits", True, "mask_old_logits must be false"),
])
def test_bad_hyperparameters_name_the_key(cls: type[Method], key: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=f"cmml.methods.x.{message}"):
        cls.resolve_hparams({**HP[cls], key: value}, "cmml.methods.x")


# ---- EWC ---------------------------------------------------------------------------------------
def head_fisher(m: EWC, data: Split, task: int) -> torch.Tensor:
    """Closed form of the head weights' empirical Fisher: mean over samples of ((p - y) f^T)^2 on the task's columns."""
    b = data.batch(torch.arange(len(data)))
    with torch.no_grad():
        f = m.features(b)
        lo, hi = INFO.columns(task, task)
        p = F.softmax(m.head(f)[:, lo:hi], dim=1)
        err = p - F.one_hot(b.labels - lo, hi - lo).float()
    out = torch.zeros_like(m.head.weight)
    out[lo:hi] = torch.einsum("nc,nd->cd", err.pow(2), f.pow(2)) / len(data)
    return out


def test_ewc_fisher_is_the_per_sample_empirical_fisher_of_the_task_data() -> None:
    m = EWC(backbone(), INFO, HP[EWC])
    c = train(m, 0, split(0))
    fisher = m.get_buffer(buffer_key("fisher", "head.weight"))
    assert torch.allclose(fisher, head_fisher(m, split(0), 0), rtol=1e-4, atol=1e-7)
    assert fisher[2:].abs().sum() == 0  # classes not trained yet get no information
    other = m.fisher(ctx(0, split(0, seed=1)))["head.weight"]  # other data, other Fisher
    assert not torch.allclose(other, m.fisher(c)["head.weight"])
    assert torch.equal(m.get_buffer(buffer_key("anchor", "head.weight")), m.head.weight)


def test_ewc_penalty_zero_at_anchor_positive_away_and_weighted_by_lambda() -> None:
    m = EWC(backbone(), INFO, HP[EWC])
    train(m, 0, split(0))
    assert m.penalty() == 0
    b = split(1).batch(torch.arange(8))
    loss0, logs0 = m.loss(b, 1)
    assert logs0["ewc"] == 0 and loss0 == m.classification_loss(m.logits(b), b.labels, 1)
    with torch.no_grad():
        m.head.weight.add_(0.1)
    fisher = m.get_buffer(buffer_key("fisher", "head.weight"))
    pen = m.penalty().detach()
    assert pen > 0 and math.isclose(float(pen), float(0.5 * fisher.sum() * 0.01), rel_tol=1e-4)
    loss, logs = m.loss(b, 1)
    assert torch.isclose(loss, m.classification_loss(m.logits(b), b.labels, 1) + 10.0 * m.penalty())
    b0 = split(0).batch(torch.arange(8))
    assert m.loss(b0, 0)[1].keys() == {"cls"}  # no penalty on the first task


def test_ewc_accumulates_fishers_with_gamma_and_reanchors() -> None:
    m = EWC(backbone(), INFO, {**HP[EWC], "gamma": 0.5})
    train(m, 0, split(0))
    f0 = m.get_buffer(buffer_key("fisher", "head.weight")).clone()
    train(m, 1, split(1))
    f1 = head_fisher(m, split(1), 1)
    assert torch.allclose(m.get_buffer(buffer_key("fisher", "head.weight")), 0.5 * f0 + f1, rtol=1e-4, atol=1e-7)
    assert torch.equal(m.get_buffer(buffer_key("anchor", "head.weight")), m.head.weight)


def test_ewc_subsamples_the_fisher_and_covers_the_backbone_when_trained() -> None:
    m = EWC(backbone(), INFO, {**HP[EWC], "fisher_samples": 3, "train_backbone": True})
    keys = [k for k in m.trainable_state() if k.startswith("ewc_fisher__backbone__")]
    assert keys and len(keys) == sum(1 for k, _ in m.named_parameters() if k.startswith("backbone."))
    a, b = (m.fisher(ctx(0, split(0), seed=s)) for s in (1, 2))  # 3 of 8 samples, drawn by the generator
    assert not torch.equal(a["head.weight"], b["head.weight"])
    assert any(v.abs().sum() > 0 for k, v in a.items() if k.startswith("backbone."))


def test_ewc_buffers_round_trip_through_checkpoints(tmp_path: Path) -> None:
    m = EWC(backbone(), INFO, HP[EWC])
    train(m, 0, split(0))
    fresh = round_trip(tmp_path, m, 0)
    assert fresh.get_buffer(buffer_key("fisher", "head.weight")).abs().sum() > 0
    assert fresh.penalty() == 0


# ---- LwF ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("multilabel", [False, True])
def test_lwf_distillation_is_zero_against_itself_and_only_sees_old_classes(multilabel: bool) -> None:
    info = TaskInfo(INFO.offsets, multilabel, "class")
    m = LwF(backbone(), info, HP[LwF])
    train(m, 0, split(0, info=info))
    m.begin_task(ctx(1, split(1, info=info), previous=m.frozen_copy()))
    b = split(1, info=info).batch(torch.arange(8))
    assert abs(float(m.distillation_loss(m.logits(b), b, 1).detach())) < 1e-6
    with torch.no_grad():
        m.head.weight[2:].add_(torch.randn(4, 32))  # new and future classes: not distilled
    assert abs(float(m.distillation_loss(m.logits(b), b, 1).detach())) < 1e-6
    with torch.no_grad():
        m.head.weight[1].add_(torch.randn(32))  # an old class
    kd = m.distillation_loss(m.logits(b), b, 1)
    assert kd > 1e-4
    loss, logs = m.loss(b, 1)
    assert math.isclose(float(loss.detach()), logs["cls"] + logs["kd"], rel_tol=1e-5)
    assert logs["kd"] == pytest.approx(float(kd.detach()))


def test_lwf_distillation_matches_kl_and_groups_per_task() -> None:
    g = torch.Generator().manual_seed(0)
    z, zt = torch.randn(5, 6, generator=g), torch.randn(5, 6, generator=g)
    p, q = F.softmax(zt[:, :4] / 2, 1), F.softmax(z[:, :4] / 2, 1)
    assert torch.isclose(distillation(z, zt, [(0, 4)], 2.0, False), (p * (p / q).log()).sum(1).mean())
    pb, qb = torch.sigmoid(zt[:, :4]), torch.sigmoid(z[:, :4])
    kl = pb * (pb / qb).log() + (1 - pb) * ((1 - pb) / (1 - qb)).log()
    assert torch.isclose(distillation(z, zt, [(0, 4)], 1.0, True), kl.mean(), atol=1e-6)
    m = LwF(backbone(), TaskInfo(INFO.offsets, False, "task"), HP[LwF])
    assert m.old_groups(2) == [(0, 2), (2, 4)] and LwF(backbone(), INFO, HP[LwF]).old_groups(2) == [(0, 4)]


def test_lwf_needs_the_previous_model_and_does_not_checkpoint_it(tmp_path: Path) -> None:
    m = LwF(backbone(), INFO, HP[LwF])
    with pytest.raises(RuntimeError, match="previous model"):
        m.begin_task(ctx(1, split(1)))
    train(m, 0, split(0))
    previous = m.frozen_copy()
    before = previous.head.weight.clone()
    train(m, 1, split(1), previous=previous)
    assert torch.equal(previous.head.weight, before) and not torch.equal(m.head.weight, before)
    assert set(m.trainable_state()) == {"head.weight", "head.bias"} and m._previous == ()
    round_trip(tmp_path, m, 1)


# ---- ER ----------------------------------------------------------------------------------------
def test_reservoir_keeps_every_sample_with_probability_size_over_n() -> None:
    """Chi-square over 2000 seeded streams of 40 samples in two chunks (tasks): each kept with p = 10/40."""
    runs, n, size = 2000, 40, 10
    kept = torch.zeros(n)
    for seed in range(runs):
        g = torch.Generator().manual_seed(seed)
        first = reservoir_slots(0, 15, size, g)
        memory = {slot: i for slot, i in first.items()}
        memory.update({slot: 15 + i for slot, i in reservoir_slots(15, 25, size, g).items()})
        assert len(memory) == size
        kept[list(memory.values())] += 1
    p = size / n
    chi2 = float(((kept - runs * p) ** 2 / (runs * p * (1 - p))).sum())
    assert chi2 < (n - 1) + 5 * math.sqrt(2 * (n - 1)), chi2  # ~ chi2(n-1): p-value far below 1e-4 otherwise
    assert reservoir_slots(0, 4, size, torch.Generator()) == {0: 0, 1: 1, 2: 2, 3: 3}  # room: kept in order


def test_er_memory_holds_samples_as_seen_bounded_and_deterministic() -> None:
    m = ER(backbone(), INFO, HP[ER])
    data0 = split(0, n=4)
    m.end_task(ctx(0, data0))
    assert m.stored() == 4 and int(m.memory_seen) == 4  # room for all: kept in order
    want = data0.batch(torch.arange(4))
    for name in ("pixel_values", "labels", "present", "tasks"):
        assert torch.equal(m.memory(name), getattr(want, name))
    data1 = split(1, n=12)
    m.end_task(ctx(1, data1, seed=3))
    assert m.stored() == 5 and int(m.memory_seen) == 16
    twin = ER(backbone(), INFO, HP[ER])
    twin.end_task(ctx(0, data0))
    twin.end_task(ctx(1, data1, seed=3))
    assert all(torch.equal(v, twin.trainable_state()[k]) for k, v in m.trainable_state().items())
    other = ER(backbone(), INFO, HP[ER])
    other.end_task(ctx(0, data0))
    other.end_task(ctx(1, data1, seed=4))
    assert not torch.equal(other.memory("pixel_values"), m.memory("pixel_values"))
    # every stored row is exactly one of the offered samples, with its presence (missing code) and fill
    pool = {0: data0, 1: data1}
    for r in range(m.stored()):
        src = pool[int(m.memory("tasks")[r])]
        hits = [i for i in range(len(src)) if torch.equal(src.pixel_values[i], m.memory("pixel_values")[r])]
        assert len(hits) == 1
        i = hits[0]
        width = m.memory("input_ids").shape[1]
        assert torch.equal(m.memory("present")[r], src.present[i]) and torch.equal(m.memory("labels")[r], src.labels[i])
        assert torch.equal(m.memory("input_ids")[r], src.input_ids[i, :width])
        assert torch.equal(m.memory("attention_mask")[r], src.attention_mask[i, :width])
        assert src.attention_mask[i, width:].sum() == 0


def test_er_replay_appends_stored_samples_and_trains_on_them() -> None:
    m = ER(backbone(), INFO, HP[ER])
    b = split(1, n=6).batch(torch.arange(6))
    assert m.replay(b, ctx(1)) is b  # empty memory
    m.end_task(ctx(0, split(0, n=8)))
    out = m.replay(b, ctx(1, seed=7))
    assert len(out) == 6 + 3 and out.input_ids.shape == out.attention_mask.shape
    width = out.input_ids.shape[1]
    assert width == max(b.input_ids.shape[1], m.memory("input_ids").shape[1]) and out.empty_ids.shape == (width,)
    own = b.input_ids.shape[1]
    assert torch.equal(out.input_ids[:6, :own], b.input_ids) and (out.input_ids[:6, own:] == 0).all()
    assert torch.equal(out.codes[:6], b.codes) and (out.tasks[6:] == 0).all()
    rows = [next(r for r in range(m.stored()) if torch.equal(m.memory("pixel_values")[r], out.pixel_values[6 + j]))
            for j in range(3)]
    assert len(set(rows)) == 3 and torch.equal(out.present[6:], m.memory("present")[rows])
    assert torch.equal(out.labels[6:], m.memory("labels")[rows])
    assert torch.equal(m.replay(b, ctx(1, seed=7)).pixel_values, out.pixel_values)  # same generator, same draw
    loss, _ = m.loss(out, 1)
    assert torch.isclose(loss, F.cross_entropy(m.logits(out)[:, :4], out.labels))


def test_er_task_incremental_scores_each_sample_on_its_own_task() -> None:
    info = TaskInfo(INFO.offsets, False, "task")
    m = ER(backbone(), info, HP[ER])
    m.end_task(ctx(0, split(0, n=8, info=info)))
    out = m.replay(split(1, n=6, info=info).batch(torch.arange(6)), ctx(1))
    logits = m.logits(out)
    want = (F.cross_entropy(logits[:6, 2:4], out.labels[:6] - 2, reduction="sum")
            + F.cross_entropy(logits[6:, 0:2], out.labels[6:], reduction="sum")) / 9
    assert torch.isclose(m.loss(out, 1)[0], want)


def test_er_memory_round_trips_through_checkpoints(tmp_path: Path) -> None:
    m = ER(backbone(), INFO, HP[ER])
    train(m, 0, split(0, n=8))
    fresh = round_trip(tmp_path, m, 0)
    assert fresh.stored() == 5 and fresh.memory("present").dtype == torch.bool
    b = split(1).batch(torch.arange(8))
    assert torch.equal(fresh.replay(b, ctx(1)).input_ids, m.replay(b, ctx(1)).input_ids)
