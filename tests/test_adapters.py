"""Adapters (cmml.models.adapters): exact identity at init, per-key gradients, hand-counted sizes, routing."""

from __future__ import annotations

import pytest
import torch

from cmml.errors import DataError
from cmml.models.adapters import (SSF, BitFit, LoRA, backbone_size, combination_index, combinations, encode_routed,
                                  feature_sites, train_only)
from cmml.models.backbone import Backbone, new_vilt, tiny_config

TINY = {"hidden_size": 16, "num_layers": 2, "num_heads": 2, "intermediate_size": 24, "patch_size": 8}
KEYS = ["image+text", "image", "text"]


def make(seed: int = 0) -> tuple[Backbone, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    torch.manual_seed(seed)
    bb = Backbone(new_vilt(tiny_config(60, 12, 16, TINY)).eval())
    bb.requires_grad_(False)
    ids = torch.randint(1, 60, (5, 7))
    mask = torch.ones(5, 7, dtype=torch.int64)
    mask[1, 4:] = 0
    return bb, (ids, mask, torch.randn(5, 3, 16, 16))


def perturb(adapters, key: str) -> None:
    with torch.no_grad():
        for p in adapters.set_parameters(key):
            p.add_(0.1 * torch.randn_like(p))


def build(kind: str, bb: Backbone, init: str = "identity"):
    if kind == "ssf":
        return SSF(bb, KEYS, init)
    if kind == "lora":
        return LoRA(bb, KEYS, rank=2, alpha=4.0, targets=["query", "value"])
    return BitFit(bb, KEYS)


def test_combinations_complete_first() -> None:
    assert combinations(("image", "text")) == [("image", "text"), ("image",), ("text",)]
    assert len(combinations(("audio", "image", "text"))) == 7
    present = torch.tensor([[True, True], [False, True], [True, False]])
    assert combination_index(present, ("image", "text"), combinations(("image", "text"))).tolist() == [0, 2, 1]
    with pytest.raises(DataError, match="none of the combinations"):
        combination_index(torch.tensor([[False, False]]), ("image", "text"), combinations(("image", "text")))


@pytest.mark.parametrize("kind", ["ssf", "lora", "bitfit"])
def test_identity_init_is_bit_equal_to_the_frozen_model(kind: str) -> None:
    bb, x = make()
    ref = bb(*x).hidden
    adapters = build(kind, bb)
    for key in KEYS:
        assert torch.equal(adapters.encode(key, *x).hidden, ref), key


def test_ssf_normal_init_changes_the_output() -> None:
    bb, x = make()
    ref = bb(*x).hidden
    torch.manual_seed(1)
    assert not torch.allclose(SSF(bb, KEYS, "normal").encode("image", *x).hidden, ref)


@pytest.mark.parametrize("kind", ["ssf", "lora", "bitfit"])
def test_only_the_selected_combination_gets_gradients(kind: str) -> None:
    bb, x = make()
    adapters = build(kind, bb)
    train_only(adapters, "image")
    adapters.encode("image", *x).hidden.square().sum().backward()
    for key in KEYS:
        grads = [p.grad for p in adapters.set_parameters(key)]
        if key == "image":
            assert all(g is not None for g in grads) and any(bool(g.abs().sum() > 0) for g in grads)
        else:
            assert all(g is None for g in grads), key
    assert all(p.grad is None for n, p in bb.named_parameters() if "lora_" not in n)


def test_parameter_counts_by_hand() -> None:
    bb, _ = make()
    d, f, layers = TINY["hidden_size"], TINY["intermediate_size"], TINY["num_layers"]
    # SSF: a scale and a shift of D per site: embed, attn + mlp per layer, final
    assert len(feature_sites(bb)) == 2 * layers + 2
    assert SSF(bb, KEYS).count("text") == 2 * d * (2 * layers + 2)
    # BitFit: per layer q, k, v, attention output (D each), fc1 (F), fc2 (D), two LayerNorms (D each);
    # embeddings: patch projection (D) and embedding LayerNorm (D); the final LayerNorm (D)
    per_layer = 4 * d + f + d + 2 * d
    assert BitFit(bb, KEYS).count("image") == layers * per_layer + 2 * d + d
    bb2, _ = make()
    size = backbone_size(bb2)
    # LoRA rank r on query and value (D -> D): A is r x D and B is D x r, per target per layer
    lora = LoRA(bb2, KEYS, rank=2, alpha=4.0, targets=["query", "value"])
    assert lora.count("image+text") == layers * 2 * (2 * d + d * 2)
    assert backbone_size(bb2) == size  # the injected weights are not counted as backbone


@pytest.mark.parametrize("kind", ["ssf", "lora", "bitfit"])
def test_mixed_batch_routes_each_sample_to_its_set(kind: str) -> None:
    bb, x = make()
    adapters = build(kind, bb)
    for key in KEYS:
        perturb(adapters, key)
    index = torch.tensor([2, 0, 1, 1, 0])
    with torch.no_grad():
        mixed = encode_routed(adapters, index, *x)
        for b, k in enumerate(index.tolist()):
            alone = adapters.encode(KEYS[k], *(t[b:b + 1] for t in x)).hidden[0]
            assert torch.allclose(mixed[b], alone, atol=1e-5), (b, k)
        other = adapters.encode(KEYS[0], *(t[2:3] for t in x)).hidden[0]
    assert not torch.allclose(mixed[2], other, atol=1e-4)  # sets differ, so routing matters


@pytest.mark.parametrize("kind", ["ssf", "lora", "bitfit"])
def test_adapter_state_round_trip(kind: str) -> None:
    bb, x = make()
    a = build(kind, bb)
    perturb(a, "text")
    state = a.adapter_state()
    bb2, _ = make()
    b = build(kind, bb2)
    b.load_adapter_state(state, "ckpt")
    with torch.no_grad():
        assert torch.equal(a.encode("text", *x).hidden, b.encode("text", *x).hidden)
    with pytest.raises(DataError, match="ckpt"):
        b.load_adapter_state({k: v for k, v in list(state.items())[1:]}, "ckpt")


def test_ssf_method_trains_only_the_current_task_set() -> None:
    from types import SimpleNamespace

    from cmml.methods.base import TaskContext, TaskInfo
    from cmml.methods.ssf import SSFPerTask

    bb, (ids, mask, pix) = make()
    hp = {"init": "identity", "init_std": 0.02, "init_from_previous": True, "mask_old_logits": True, "bce_mean": "seen"}
    m = SSFPerTask(bb, TaskInfo((0, 2, 4), False, "class"), hp)
    perturb(m.adapters, "task0")
    m.begin_task(TaskContext(task=1, data=object(), device=torch.device("cpu")))
    assert all(torch.equal(a, b) for a, b in zip(m.adapters.set_parameters("task1"), m.adapters.set_parameters("task0")))
    batch = SimpleNamespace(input_ids=ids, attention_mask=mask, pixel_values=pix, labels=torch.tensor([2, 3, 2, 3, 2]))
    m.loss(batch, 1)[0].backward()
    assert all(p.grad is None for p in m.adapters.set_parameters("task0"))
    assert all(p.grad is not None for p in m.adapters.set_parameters("task1")) and m.head.weight.grad is not None
    with torch.no_grad():
        z = m.logits(batch)
        own0 = m.head(m.adapters.encode("task0", ids, mask, pix).text_cls)
    assert torch.equal(z[:, :2], own0[:, :2])  # task 0's classes are scored on set 0's features
