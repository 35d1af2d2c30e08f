"""A CODA-Prompt style component pool (docs/rebq.md §3.1), one row block per task, fully vectorised.

Per layer of ``layers`` the pool holds components P [rows, length, D], keys K [rows, D] and
attention vectors A [rows, D]. For a query q the weights are the raw cosines
α_k = cos(q ⊙ A_k, K_k) -- no softmax, no top-k, every active row used (docs/rebq.md §6.4) -- and the
prompt is Σ_k α_k P_k. The cosine follows CODA-P's ``normalize`` (each norm clamped at 1e-12),
so all-zero rows give α = 0 and exactly zero gradients, as in the released code (docs/rebq.md §6.1).

Task t owns rows [t·pt, (t+1)·pt), pt = pool_size // num_tasks, stored as their own parameters
(one [n_layers, pt, ...] tensor per task and kind), so :meth:`begin_task` can make the current
task's rows the only trainable ones: older rows have ``requires_grad=False`` (the optimizer never
sees them, not even for weight decay) and rows of unseen tasks are neither trained nor used.
Only pt · num_tasks rows are allocated (the released remainder rows are never used, docs/rebq.md §6.16).
The forward uses the rows of the ``learned_tasks`` tasks seen so far (a buffer, so it round-trips
through checkpoints). All layers and the whole batch are computed in one einsum each (docs/rebq.md §6.13).

Shared with the other prompt methods (CODA-Prompt, L2P, DualPrompt, MAP): :class:`KeyedPrompts`
(prompts with one learnable key each, selected by cosine to a query), :func:`split_prefixes`,
:func:`frozen_query` and :func:`check_layers`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cmml.errors import ConfigError
from cmml.models.backbone import Backbone, frozen_pass

EPS = 1e-12  # CODA-P's F.normalize epsilon


def orthonormal_rows(old: Tensor, n: int) -> Tensor:
    """``n`` unit rows per layer, orthogonal to each other and to every row of ``old`` [L, s, F].

    Gram–Schmidt of a random-normal start (drawn from torch's global RNG, on the CPU so that a
    seed gives the same rows on any device), as CODA-P and docs/rebq.md §3.1 do (their uniform init of
    these rows is overwritten by that start, so it is not drawn here). Computed as a float64 QR of
    [old | start], so orthogonality also holds against trained (no longer orthonormal) old rows,
    where CODA-P's projection sum would not; undoing the sign of R's diagonal makes the result
    equal to Gram–Schmidt.
    """
    layers, s, width = old.shape
    start = torch.randn(layers, n, width).to(device=old.device, dtype=torch.float64)
    m = torch.cat([old.detach().double(), start], dim=1).transpose(1, 2)  # [L, F, s+n]
    q, r = torch.linalg.qr(m)
    sign = torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)[:, s:])
    return (q[:, :, s:] * sign[:, None, :]).transpose(1, 2).to(old.dtype)


class PromptPool(nn.Module):
    """Components, keys and attention vectors for ``layers``; see the module docstring."""

    def __init__(self, layers: Sequence[int], pool_size: int, length: int, dim: int, num_tasks: int):
        super().__init__()
        self.layers = tuple(layers)
        self.length = length
        self.per_task = pool_size // num_tasks
        n, pt = len(self.layers), self.per_task

        def blocks(*shape: int) -> nn.ParameterList:
            return nn.ParameterList(nn.Parameter(torch.zeros(n, pt, *shape), requires_grad=False)
                                    for _ in range(num_tasks))

        self.p = blocks(length, dim)
        self.k = blocks(dim)
        self.a = blocks(dim)
        self.register_buffer("learned_tasks", torch.zeros((), dtype=torch.long))

    def begin_task(self, task: int, init: bool = True) -> None:
        """Make ``task``'s rows the only trainable ones, initialising them on first use.

        ``init`` False leaves a new task's rows at zero: the released code's behaviour for every
        task after the first (docs/rebq.md §6.1), kept for ``as_released``.
        """
        learned = int(self.learned_tasks)
        if not learned - 1 <= task <= learned or task >= len(self.p):
            raise ValueError(f"begin_task({task}) on a pool that has learned {learned} of {len(self.p)} tasks")
        if task == learned:
            if init:
                with torch.no_grad():
                    for blocks in (self.p, self.k, self.a):
                        new = blocks[task]
                        old = torch.cat([blocks[t] for t in range(task)], dim=1) if task else new[:, :0]
                        rows = orthonormal_rows(old.flatten(2), self.per_task)
                        new.copy_(rows.view_as(new))
            self.learned_tasks.fill_(task + 1)
        for blocks in (self.p, self.k, self.a):
            for t, param in enumerate(blocks):
                param.requires_grad_(t == task)

    def rows(self) -> tuple[Tensor, Tensor, Tensor]:
        """Active P [L, R, length, D], K [L, R, D], A [L, R, D] (R = learned tasks · pt)."""
        n = int(self.learned_tasks)
        if n == 0:
            raise RuntimeError("PromptPool used before begin_task(0)")
        return tuple(blocks[0] if n == 1 else torch.cat(list(blocks[:n]), dim=1)  # type: ignore[return-value]
                     for blocks in (self.p, self.k, self.a))

    def weights(self, query: Tensor) -> Tensor:
        """α [L, B, R] = cos(q ⊙ A_k, K_k) for queries [B, D], computed in fp32 (no autocast)."""
        _, k, a = self.rows()
        with torch.autocast(query.device.type, enabled=False):
            q, k, a = query.float(), k.float(), a.float()
            num = torch.einsum("bd,lrd->lbr", q, a * F.normalize(k, dim=-1, eps=EPS))
            den = torch.einsum("bd,lrd->lbr", q.square(), a.square()).clamp_min(EPS * EPS).sqrt()
            return num / den

    def compose(self, alpha: Tensor) -> Tensor:
        """Prompts [L, B, length, D] = Σ_k α_k P_k for weights [L, B, R]."""
        p = self.rows()[0]
        return torch.einsum("lbr,lrpd->lbpd", alpha.to(p.dtype), p)

    def deep_prompts(self, prompts: Tensor) -> dict[int, Tensor]:
        """Position ``input``: {layer: [B, length, D]} for :class:`cmml.models.backbone.Injection`."""
        return dict(zip(self.layers, prompts.unbind(0)))

    def prefixes(self, prompts: Tensor) -> dict[int, tuple[Tensor, Tensor]]:
        """Position ``attention``: {layer: (first length/2 tokens as keys, last length/2 as values)}."""
        return split_prefixes(self.layers, prompts)

    def ortho_penalty(self) -> Tensor:
        """CODA-P's orthogonality loss over the active rows, summed over layers.

        For keys, attention vectors and flattened components X [L, R, F]: mean((X Xᵀ − I)²) per
        layer. Frozen rows take part but get no gradient (they do not require grad).
        """
        p, k, a = self.rows()
        total = p.new_zeros(())
        for x in (k, a, p.flatten(2)):
            gram = x @ x.transpose(1, 2)
            eye = torch.eye(gram.shape[-1], device=gram.device, dtype=gram.dtype)
            total = total + (gram - eye).square().mean(dim=(1, 2)).sum()
        return total


def split_prefixes(layers: Sequence[int], prompts: Tensor) -> dict[int, tuple[Tensor, Tensor]]:
    """Prompts [L, B, P, D] as prefix key/values {layer: (first P/2 tokens, last P/2 tokens)}."""
    half = prompts.shape[2] // 2
    return {layer: (p[:, :half], p[:, half:]) for layer, p in zip(layers, prompts.unbind(0))}


def frozen_query(backbone: Backbone, batch: Any) -> Tensor:
    """[B, D] query of the query-based prompt methods: text [CLS] of the unprompted input, no grad."""
    return frozen_pass(backbone, batch.input_ids, batch.attention_mask, batch.pixel_values, batch.pixel_mask).text_cls


def check_layers(layers: Any, key: str, where: str, depth: int | None = None) -> None:
    """ConfigError naming ``key`` unless ``layers`` is a non-empty increasing list of layer indices
    (below ``depth`` when given: the backbone's number of layers)."""
    if (not isinstance(layers, list) or not layers
            or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in layers)
            or layers != sorted(set(layers))):
        raise ConfigError(f"{where}.{key} must be a non-empty increasing list of layer indices >= 0, got {layers!r}")
    if depth is not None and layers[-1] >= depth:
        raise ConfigError(f"{where}.{key} lists layer {layers[-1]}, but the backbone has {depth} layers "
                          f"(0..{depth - 1})")


class KeyedPrompts(nn.Module):
    """``size`` prompts of shape ``shape``, each with a learnable key [D] (L2P's pool, DualPrompt's E-prompts).

    Both start from U(0, 1), as the PyTorch releases of L2P and DualPrompt initialise them. The
    match of a query is the cosine to each key (norms clamped at 1e-12).
    """

    def __init__(self, size: int, shape: Sequence[int], dim: int):
        super().__init__()
        self.prompts = nn.Parameter(torch.rand(size, *shape))
        self.keys = nn.Parameter(torch.rand(size, dim))

    def similarity(self, query: Tensor) -> Tensor:
        """[B, size] cosine between queries [B, D] and the keys, in fp32 (no autocast)."""
        with torch.autocast(query.device.type, enabled=False):
            q = F.normalize(query.float(), dim=-1, eps=EPS)
            return q @ F.normalize(self.keys.float(), dim=-1, eps=EPS).t()

    def select(self, idx: Tensor) -> Tensor:
        """Prompts [B, k, *shape] of the indices ``idx`` [B, k]."""
        return self.prompts[idx]

    @staticmethod
    def pull_loss(sim: Tensor, idx: Tensor) -> Tensor:
        """Σ over the selected keys of (1 − cosine), averaged over the batch: pulls them to the queries.

        The releases subtract the summed cosine instead; the gradient is the same.
        """
        return (1.0 - sim.gather(1, idx)).sum(1).mean()
