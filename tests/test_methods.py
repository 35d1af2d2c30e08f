"""Method mechanics shared by every method: frozen backbone stays bit-identical, the full
variant trains it, logit masking, checkpoint round trip and bad checkpoints."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from cmml.errors import DataError
from cmml.methods.base import TaskContext, TaskInfo
from cmml.methods.finetune import FineTune
from cmml.models.backbone import Backbone, new_vilt, tiny_config
from cmml.train.checkpoint import RunContext, load_checkpoint, save_checkpoint

HP = {"epochs": 1, "batch_size": 4, "lr": 0.01, "weight_decay": 0.01, "warmup": 0.0, "betas": [0.9, 0.999],
      "mask_old_logits": False, "bce_mean": "seen"}
INFO = TaskInfo((0, 2, 4, 6), multilabel=False, scenario="class")


def tctx(task: int) -> TaskContext:
    """A task context without data (the mechanics tested here do not read it)."""
    return TaskContext(task=task, data=None, device=torch.device("cpu"))


def backbone() -> Backbone:
    torch.manual_seed(0)
    tiny = dict(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, patch_size=8)
    return Backbone(new_vilt(tiny_config(40, 10, 16, tiny)).eval())


def batch(task: int, n: int = 6) -> SimpleNamespace:
    g = torch.Generator().manual_seed(task)
    return SimpleNamespace(input_ids=torch.randint(5, 40, (n, 10), generator=g), attention_mask=torch.ones(n, 10, dtype=torch.long),
                           pixel_values=torch.randn(n, 3, 16, 16, generator=g),
                           labels=torch.randint(INFO.offsets[task], INFO.offsets[task + 1], (n,), generator=g),
                           codes=torch.zeros(n, dtype=torch.long), pixel_mask=None)


def steps(method: FineTune, task: int, n: int = 5) -> None:
    opt = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=0.01)
    method.begin_task(tctx(task))
    method.train()
    for _ in range(n):
        loss, _ = method.loss(batch(task), task)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_head_only_keeps_backbone_bit_identical() -> None:
    m = FineTune(backbone(), INFO, {**HP, "train_backbone": False})
    before = {k: v.clone() for k, v in m.backbone.state_dict().items()}
    head = m.head.weight.clone()
    steps(m, 0)
    assert all(torch.equal(before[k], v) for k, v in m.backbone.state_dict().items())
    assert not torch.equal(head, m.head.weight)
    assert set(m.trainable_state()) == {"head.weight", "head.bias"}


def test_full_variant_trains_the_backbone_and_checkpoints_it() -> None:
    m = FineTune(backbone(), INFO, {**HP, "train_backbone": True})
    before = {k: v.clone() for k, v in m.backbone.state_dict().items()}
    steps(m, 0)
    assert any(not torch.equal(before[k], v) for k, v in m.backbone.state_dict().items())
    assert any(k.startswith("backbone.") for k in m.trainable_state())


def test_logit_masking_class_and_task_incremental() -> None:
    m = FineTune(backbone(), INFO, {**HP, "mask_old_logits": True, "train_backbone": False})
    logits = torch.zeros(2, 6, requires_grad=True)
    labels = torch.tensor([2, 3])
    m.classification_loss(logits, labels, task=1).backward()
    # old-class columns get no gradient, future-task columns are not in the loss at all
    assert logits.grad[:, :2].abs().sum() == 0 and logits.grad[:, 4:].abs().sum() == 0
    assert logits.grad[:, 2:4].abs().sum() > 0
    # without masking the old columns compete (and get gradient)
    m.hp["mask_old_logits"] = False
    logits.grad = None
    m.classification_loss(logits, labels, task=1).backward()
    assert logits.grad[:, :2].abs().sum() > 0
    assert INFO.columns(1, 2) == (0, 6) and INFO.columns(0, 0) == (0, 2) and INFO.columns(2, 0) == (0, 6)
    assert TaskInfo(INFO.offsets, False, "task").columns(1, 2) == (2, 4)


def context(tmp_path: Path) -> RunContext:
    return RunContext(run="ft", method_name="finetune", method_cls=FineTune, setting="both70", seed=0,
                      hp={**HP, "train_backbone": False}, data_dir=tmp_path, tasks_dir=tmp_path, missing_dir=tmp_path,
                      backbone_dir=tmp_path, backbone_sha256="ab" * 32, info=INFO, tasks=None, tokenizer=None, fill="map",
                      joint=False)


def test_checkpoint_round_trip_and_chaining(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    m = FineTune(backbone(), INFO, ctx.hp)
    steps(m, 0)
    save_checkpoint(tmp_path / "t0.pt", ctx, m, 0)
    fresh = FineTune(backbone(), INFO, ctx.hp)
    load_checkpoint(tmp_path / "t0.pt", ctx, fresh, 0)
    for k, v in m.trainable_state().items():
        assert torch.equal(v, fresh.trainable_state()[k])
    with pytest.raises(DataError, match="checkpoint field 'task' is 0, expected 1"):
        load_checkpoint(tmp_path / "t0.pt", ctx, fresh, 1)
    other = RunContext(**{**ctx.__dict__, "backbone_sha256": "cd" * 32})
    with pytest.raises(DataError, match="backbone_sha256"):
        load_checkpoint(tmp_path / "t0.pt", other, fresh, 0)


def test_corrupt_or_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    m = FineTune(backbone(), INFO, ctx.hp)
    save_checkpoint(tmp_path / "t0.pt", ctx, m, 0)
    raw = bytearray((tmp_path / "t0.pt").read_bytes())
    raw[len(raw) // 2: len(raw) // 2 + 64] = b"\\x00" * 64
    (tmp_path / "bad.pt").write_bytes(bytes(raw[: len(raw) // 2]))
    with pytest.raises(DataError, match="bad.pt: corrupt checkpoint"):
        load_checkpoint(tmp_path / "bad.pt", ctx, m, 0)
    with pytest.raises(DataError, match="nope.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt", ctx, m, 0)


def released_bce(logits: torch.Tensor, labels: torch.Tensor, lo: int, start: int, hi: int) -> torch.Tensor:
    """The released code's masked BCE: old columns filled with -100, mean over every seen column."""
    z = torch.cat([torch.full_like(logits[:, lo:start], -100.0), logits[:, start:hi]], dim=1)
    return F.binary_cross_entropy_with_logits(z, labels[:, lo:hi])


@pytest.mark.parametrize("mean", ["seen", "trained"])
def test_masked_multilabel_bce_normalisation(mean: str) -> None:
    info = TaskInfo((0, 2, 4, 6), multilabel=True, scenario="class")
    m = FineTune(backbone(), info, {**HP, "mask_old_logits": True, "train_backbone": False, "bce_mean": mean})
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 6, generator=g)
    y = (torch.rand(5, 6, generator=g) > 0.5).float()
    ours = x.clone().requires_grad_(True)
    m.classification_loss(ours, y, task=2).backward()
    ref = x.clone().requires_grad_(True)
    released_bce(ref, y, 0, 4, 6).backward()
    scale = 1.0 if mean == "seen" else 3.0  # task 2 of 3 equal tasks: seen/trained columns = 6/2
    assert torch.allclose(ours.grad, scale * ref.grad, atol=1e-7) and ours.grad[:, :4].abs().sum() == 0


def test_optimizer_hook_uses_the_run_betas() -> None:
    m = FineTune(backbone(), INFO, {**HP, "train_backbone": False, "betas": [0.8, 0.95]})
    opt = m.configure_optimizer()
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["betas"] == (0.8, 0.95)
    assert {id(p) for p in opt.param_groups[0]["params"]} == {id(m.head.weight), id(m.head.bias)}


def test_buffers_of_any_shape_travel_in_checkpoints(tmp_path: Path) -> None:
    """What EWC (Fisher diagonals) and replay (a growing exemplar memory) need from checkpoints."""
    ctx = context(tmp_path)
    m = FineTune(backbone(), INFO, ctx.hp)
    m.register_buffer("memory", torch.arange(12.0).view(4, 3))
    save_checkpoint(tmp_path / "t0.pt", ctx, m, 0)
    fresh = FineTune(backbone(), INFO, ctx.hp)
    fresh.register_buffer("memory", torch.zeros(0, 3))
    load_checkpoint(tmp_path / "t0.pt", ctx, fresh, 0)
    assert torch.equal(fresh.memory, m.memory)


def test_frozen_copy_is_independent_and_shares_a_frozen_backbone() -> None:
    m = FineTune(backbone(), INFO, {**HP, "train_backbone": False})
    twin = m.frozen_copy()
    assert twin.backbone is m.backbone and not any(p.requires_grad for p in twin.parameters())
    steps(m, 0)
    assert not torch.equal(twin.head.weight, m.head.weight)
    full = FineTune(backbone(), INFO, {**HP, "train_backbone": True}).frozen_copy()
    assert not any(p.requires_grad for p in full.backbone.parameters())
