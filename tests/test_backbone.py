"""The backbone interface: equals transformers' ViltModel when nothing is injected, and each
injection point (deep prompts, prefixes, feature adapters) changes the output only when used."""

from __future__ import annotations

import torch

from cmml.models.backbone import Backbone, Injection, backbone_digest, load_backbone, new_vilt, tiny_config

TINY = dict(hidden_size=32, num_layers=3, num_heads=4, intermediate_size=64, patch_size=8)


def make(seed: int = 0) -> tuple[Backbone, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    torch.manual_seed(seed)
    bb = Backbone(new_vilt(tiny_config(60, 12, 16, TINY)).eval())
    ids = torch.randint(5, 60, (4, 12))
    mask = torch.ones(4, 12, dtype=torch.long)
    mask[1, 7:] = 0
    mask[3, 3:] = 0
    return bb, (ids, mask, torch.randn(4, 3, 16, 16))


def test_equals_transformers_vilt_without_injection() -> None:
    bb, (ids, mask, px) = make()
    ours = bb(ids, mask, px)
    ref = bb.vilt(input_ids=ids, attention_mask=mask, pixel_values=px).last_hidden_state
    assert ours.hidden.shape == ref.shape
    # text tokens keep their order in both; HF shuffles image patches, so compare image [CLS]
    torch.testing.assert_close(ours.hidden[:, :12], ref[:, :12], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.image_cls, ref[:, 12], atol=1e-5, rtol=1e-5)


def test_empty_injection_is_identity_and_each_point_changes_output() -> None:
    bb, (ids, mask, px) = make()
    base = bb(ids, mask, px).hidden
    torch.testing.assert_close(bb(ids, mask, px, Injection()).hidden, base, atol=0, rtol=0)
    d = bb.hidden_size
    prompts = {0: torch.randn(4, 3, d), 1: torch.randn(4, 3, d)}
    deep = bb(ids, mask, px, Injection(deep_prompts=prompts)).hidden
    assert deep.shape == base.shape  # prompt positions are removed after the last layer
    assert not torch.allclose(deep, base)
    prefix = bb(ids, mask, px, Injection(prefixes={1: [(torch.randn(4, 2, d), torch.randn(4, 2, d))]})).hidden
    assert prefix.shape == base.shape and not torch.allclose(prefix, base)
    # a layer-1 prefix cannot change layer-0 outputs; check through the adapter hook
    seen: dict[str, torch.Tensor] = {}

    def spy(site: str, layer: int, h: torch.Tensor) -> torch.Tensor:
        seen[f"{site}{layer}"] = h.detach().clone()
        return h

    bb(ids, mask, px, Injection(adapter=spy))
    plain = dict(seen)
    bb(ids, mask, px, Injection(prefixes={1: [(torch.randn(4, 2, d), torch.randn(4, 2, d))]}, adapter=spy))
    torch.testing.assert_close(seen["attn0"], plain["attn0"], atol=0, rtol=0)
    assert not torch.allclose(seen["attn1"], plain["attn1"])
    identity = bb(ids, mask, px, Injection(adapter=lambda site, layer, h: h)).hidden
    torch.testing.assert_close(identity, base, atol=0, rtol=0)
    scaled = bb(ids, mask, px, Injection(adapter=lambda site, layer, h: h * 1.5 if site == "mlp" else h)).hidden
    assert not torch.allclose(scaled, base)


def test_deep_prompt_semantics_match_explicit_token_insertion() -> None:
    """A layer-0 deep prompt equals inserting the tokens after text [CLS] by hand and dropping them."""
    bb, (ids, mask, px) = make()
    prompt = torch.randn(4, 2, bb.hidden_size)
    got = bb(ids, mask, px, Injection(deep_prompts={0: prompt})).hidden
    x, keymask, _ = bb.embed(ids, mask, px)
    x = torch.cat([x[:, :1], prompt, x[:, 1:]], dim=1)
    keymask = torch.cat([keymask[:, :1], torch.ones(4, 2, dtype=torch.bool), keymask[:, 1:]], dim=1)
    ext = (1.0 - keymask[:, None, None, :].float()) * torch.finfo(torch.float32).min
    for layer in bb.vilt.encoder.layer:
        x = layer(x, ext)[0]
    want = bb.vilt.layernorm(torch.cat([x[:, :1], x[:, 3:]], dim=1))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_gradients_reach_injected_tensors_not_frozen_backbone() -> None:
    bb, (ids, mask, px) = make()
    bb.requires_grad_(False)
    prompt = torch.randn(4, 2, bb.hidden_size, requires_grad=True)
    pk = torch.randn(4, 2, bb.hidden_size, requires_grad=True)
    out = bb(ids, mask, px, Injection(deep_prompts={0: prompt}, prefixes={2: [(pk, pk)]}))
    out.text_cls.sum().backward()
    assert prompt.grad is not None and prompt.grad.abs().sum() > 0
    assert pk.grad is not None and pk.grad.abs().sum() > 0
    assert all(p.grad is None for p in bb.parameters())


def test_save_and_load_local_pretrained_directory(tmp_path) -> None:
    """The 'real' path: from_pretrained of a local directory, exercised with a tiny saved model."""
    bb, (ids, mask, px) = make()
    bb.vilt.save_pretrained(tmp_path / "vilt")
    loaded = load_backbone(tmp_path / "vilt")
    torch.testing.assert_close(loaded(ids, mask, px).hidden, bb(ids, mask, px).hidden, atol=0, rtol=0)
    assert backbone_digest(tmp_path / "vilt") == backbone_digest(tmp_path / "vilt")
    assert len(backbone_digest(tmp_path / "vilt")) == 64
