"""ViLT (transformers ``ViltModel``) behind one small interface for prompts, prefixes and adapters.

The backbone's own modules (embeddings, per-layer q/k/v, MLP, LayerNorms) are reused as they
are; :class:`Backbone` only drives them layer by layer so that methods can inject:

* **deep prompts** ``{layer: Tensor[B, P, D]}`` -- at the first listed layer the P tokens are
  inserted right after text [CLS] (positions 1..P, attended by every token); at later listed
  layers the same positions are overwritten (VPT-deep); unlisted layers carry them through.
  They are removed after the last layer, so output indexing never changes.
* **prefixes** ``{layer: [(K, V), ...]}`` with K, V of shape [B, Pk, D] -- extra keys/values
  concatenated to that layer's self-attention (prefix tuning). Queries, and so the output
  length, are unchanged. Key order does not matter to attention, so no position is needed.
* **feature adapters** -- a callable ``adapter(site, layer, h) -> h`` applied at the sites
  ``embed`` (layer -1), ``attn`` and ``mlp`` (each branch output before its residual add) and
  ``final`` (after the final LayerNorm, layer = num_layers): scale/shift (SSF), BitFit-style
  or any other feature modulation.

With nothing injected the output equals ``ViltModel``'s last_hidden_state (tested), except
that images are fixed-size and every patch is kept, in order (HF samples patches at random).
Position 0 is text [CLS]; position ``text_len`` is image [CLS].
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Adapter = Callable[[str, int, Tensor], Tensor]


@dataclass
class Injection:
    """What a method injects into one forward pass (all optional)."""

    deep_prompts: dict[int, Tensor] = field(default_factory=dict)
    prefixes: dict[int, list[tuple[Tensor, Tensor]]] = field(default_factory=dict)
    adapter: Adapter | None = None


@dataclass
class Encoded:
    """Backbone output: hidden states after the final LayerNorm and the text length."""

    hidden: Tensor
    text_len: int

    @property
    def text_cls(self) -> Tensor:
        """[B, D] text [CLS] features (position 0)."""
        return self.hidden[:, 0]

    @property
    def image_cls(self) -> Tensor:
        """[B, D] image [CLS] features (position ``text_len``)."""
        return self.hidden[:, self.text_len]


class Backbone(nn.Module):
    """A ViltModel plus the injection-aware forward described in the module docstring."""

    def __init__(self, vilt: nn.Module):
        super().__init__()
        self.vilt = vilt
        cfg = vilt.config
        self.hidden_size: int = cfg.hidden_size
        self.num_layers: int = cfg.num_hidden_layers
        self.num_heads: int = cfg.num_attention_heads

    def embed(self, input_ids: Tensor, attention_mask: Tensor, pixel_values: Tensor,
              pixel_mask: Tensor | None = None) -> tuple[Tensor, Tensor, int]:
        """Token embeddings [B, N, D], key mask [B, N] (bool) and text length, all patches kept.

        With ``pixel_mask`` [B, H, W] (1 = real pixel, images padded at the bottom and right), as in
        ViltModel: a patch is real where the mask, resized to the patch grid (nearest), is 1; each
        image's position embeddings are interpolated to its own real grid and padded with zeros; the
        padding patches are masked out of attention.
        """
        e = self.vilt.embeddings
        cfg = self.vilt.config
        text = e.text_embeddings(input_ids=input_ids)
        patches = e.patch_embeddings(pixel_values)  # [B, D, gh, gw]
        b, d, gh, gw = patches.shape
        grid = cfg.image_size // cfg.patch_size
        pos = e.position_embeddings
        spatial = pos[:, 1:].transpose(1, 2).reshape(1, d, grid, grid)
        if pixel_mask is None:
            if (gh, gw) != (grid, grid):
                spatial = F.interpolate(spatial, size=(gh, gw), mode="bilinear", align_corners=True)
            spatial = spatial.expand(b, -1, -1, -1)
            patch_mask = attention_mask.new_ones(b, gh * gw, dtype=torch.bool)
        else:
            grid_mask = F.interpolate(pixel_mask[:, None].float(), size=(gh, gw))[:, 0] > 0.5  # [B, gh, gw]
            heights, widths = grid_mask[:, :, 0].sum(1).tolist(), grid_mask[:, 0, :].sum(1).tolist()
            spatial = torch.cat([F.pad(F.interpolate(spatial, size=(h, w), mode="bilinear", align_corners=True),
                                       (0, gw - w, 0, gh - h)) for h, w in zip(heights, widths)])
            patch_mask = grid_mask.flatten(1)
        image = patches.flatten(2).transpose(1, 2) + spatial.flatten(2).transpose(1, 2)
        image = torch.cat([(e.cls_token + pos[:, :1]).expand(b, -1, -1), image], dim=1)
        text = text + e.token_type_embeddings.weight[0]
        image = e.dropout(image) + e.token_type_embeddings.weight[1]
        x = torch.cat([text, image], dim=1)
        mask = torch.cat([attention_mask.bool(), patch_mask.new_ones(b, 1), patch_mask], dim=1)
        return x, mask, input_ids.shape[1]

    def forward(self, input_ids: Tensor, attention_mask: Tensor, pixel_values: Tensor,
                inject: Injection | None = None, pixel_mask: Tensor | None = None) -> Encoded:
        """Encode a batch, applying ``inject`` (see module docstring); ``pixel_mask`` as in :meth:`embed`."""
        inj = inject or Injection()
        adapt = inj.adapter
        x, mask, text_len = self.embed(input_ids, attention_mask, pixel_values, pixel_mask)
        if adapt is not None:
            x = adapt("embed", -1, x)
        b = x.shape[0]
        n_prompt = 0
        for li, layer in enumerate(self.vilt.encoder.layer):
            prompt = inj.deep_prompts.get(li)
            if prompt is not None:
                prompt = prompt.to(x.dtype)
                if n_prompt == 0:
                    n_prompt = prompt.shape[1]
                    x = torch.cat([x[:, :1], prompt, x[:, 1:]], dim=1)
                    mask = torch.cat([mask[:, :1], mask.new_ones(b, n_prompt), mask[:, 1:]], dim=1)
                elif prompt.shape[1] != n_prompt:
                    raise ValueError(f"deep prompt at layer {li} has {prompt.shape[1]} tokens, expected {n_prompt}")
                else:
                    x = torch.cat([x[:, :1], prompt, x[:, 1 + n_prompt:]], dim=1)
            x = self._layer(layer, li, x, mask, inj.prefixes.get(li, ()), adapt)
        if n_prompt:
            x = torch.cat([x[:, :1], x[:, 1 + n_prompt:]], dim=1)
        x = self.vilt.layernorm(x)
        if adapt is not None:
            x = adapt("final", self.num_layers, x)
        return Encoded(x, text_len)

    def _layer(self, layer: nn.Module, li: int, x: Tensor, mask: Tensor,
               prefixes: list[tuple[Tensor, Tensor]] | tuple[()], adapt: Adapter | None) -> Tensor:
        att = layer.attention.attention
        h = layer.layernorm_before(x)
        q, k, v = att.query(h), att.key(h), att.value(h)
        key_mask = mask
        for pk, pv in prefixes:
            k = torch.cat([k, pk.to(k.dtype)], dim=1)
            v = torch.cat([v, pv.to(v.dtype)], dim=1)
            key_mask = torch.cat([key_mask, key_mask.new_ones(pk.shape[0], pk.shape[1])], dim=1)
        b, n, _ = q.shape
        heads, hd = self.num_heads, self.hidden_size // self.num_heads
        q = q.view(b, n, heads, hd).transpose(1, 2)
        k = k.view(b, k.shape[1], heads, hd).transpose(1, 2)
        v = v.view(b, v.shape[1], heads, hd).transpose(1, 2)
        p = att.dropout.p if self.training else 0.0
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :], dropout_p=p)
        ctx = ctx.transpose(1, 2).reshape(b, n, self.hidden_size)
        a = layer.attention.output.dropout(layer.attention.output.dense(ctx))
        if adapt is not None:
            a = adapt("attn", li, a)
        x = x + a
        m = layer.output.dropout(layer.output.dense(layer.intermediate(layer.layernorm_after(x))))
        if adapt is not None:
            m = adapt("mlp", li, m)
        return x + m


def tiny_config(vocab_size: int, max_text_len: int, image_size: int, tiny: dict[str, int]):
    """A small ViltConfig (no dropout) for the embedded benchmark."""
    from transformers import ViltConfig

    return ViltConfig(
        vocab_size=vocab_size, hidden_size=tiny["hidden_size"], num_hidden_layers=tiny["num_layers"],
        num_attention_heads=tiny["num_heads"], intermediate_size=tiny["intermediate_size"],
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_position_embeddings=max_text_len,
        image_size=image_size, patch_size=tiny["patch_size"], num_channels=3, modality_type_vocab_size=2,
        type_vocab_size=2, max_image_length=-1, num_images=-1,
    )


def new_vilt(config) -> nn.Module:
    """A randomly initialised ViltModel (no pooler)."""
    from transformers import ViltModel

    return ViltModel(config, add_pooling_layer=False)


# (inputs, output) of the frozen passes made inside reuse_frozen_passes(store) blocks
_REUSE: ContextVar[list[tuple[tuple[Tensor | None, ...], Encoded]] | None] = ContextVar("frozen_passes", default=None)


@contextmanager
def reuse_frozen_passes(store: list[tuple[tuple[Tensor | None, ...], Encoded]]) -> Iterator[None]:
    """Inside the block, :func:`frozen_pass` returns the output kept in ``store`` when its inputs equal,
    element for element, those of an earlier call, instead of recomputing it (and keeps new ones there).

    Only for a backbone that is the same frozen module in every use of ``store``: evaluation of a
    run whose checkpoints leave the backbone untouched, where each checkpoint's query pass on a
    test batch repeats the first one exactly.
    """
    token = _REUSE.set(store)
    try:
        yield
    finally:
        _REUSE.reset(token)


def _same(a: Tensor | None, b: Tensor | None) -> bool:
    return a is b if a is None or b is None else a.shape == b.shape and bool(torch.equal(a, b))


def frozen_pass(backbone: Backbone, input_ids: Tensor, attention_mask: Tensor, pixel_values: Tensor,
                pixel_mask: Tensor | None = None) -> Encoded:
    """The backbone's plain pass without grad (the query of the prompt methods); reused inside
    :func:`reuse_frozen_passes`."""
    store, inputs = _REUSE.get(), (input_ids, attention_mask, pixel_values, pixel_mask)
    for seen, out in store or ():
        if all(_same(a, b) for a, b in zip(inputs, seen)):
            return out
    with torch.no_grad():
        out = backbone(input_ids, attention_mask, pixel_values, pixel_mask=pixel_mask)
    if store is not None:
        store.append((inputs, out))
    return out


def load_backbone(path: str | Path) -> Backbone:
    """Load a ViltModel saved with ``save_pretrained`` (a local directory or, with network, a hub id)."""
    from transformers import ViltModel
    from transformers.utils import logging as hf_logging

    from cmml.errors import DataError

    hf_logging.disable_progress_bar()
    try:
        vilt = ViltModel.from_pretrained(str(path), add_pooling_layer=False)
    except (OSError, ValueError, RuntimeError) as exc:
        raise DataError(f"{path}: cannot load a ViLT backbone ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    vilt.eval()
    return Backbone(vilt)


def backbone_digest(path: str | Path) -> str:
    """sha256 of the weight file(s) of a saved backbone directory: how checkpoints reference it."""
    p = Path(path)
    h = hashlib.sha256()
    files = sorted(p.glob("*.safetensors")) + sorted(p.glob("*.bin"))
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()
