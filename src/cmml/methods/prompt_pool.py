"""A CODA-Prompt style component pool (rebq.md §3.1), one row block per task, fully vectorised.

Per layer of ``layers`` the pool holds components P [rows, length, D], keys K [rows, D] and
attention vectors A [rows, D]. For a query q the weights are the raw cosines
α_k = cos(q ⊙ A_k, K_k) -- no softmax, no top-k, every active row used (rebq.md §6.4) -- and the
prompt is Σ_k α_k P_k. The cosine follows CODA-P's ``normalize`` (each norm clamped at 1e-12),
so all-zero rows give α = 0 and exactly zero gradients, as in the released code (rebq.md §6.1).

Task t owns rows [t·pt, (t+1)·pt), pt = pool_size // num_tasks, stored as their own parameters
(one [n_layers, pt, ...] tensor per task and kind), so :meth:`begin_task` can make the current
task's rows the only trainable ones: older rows have ``requires_grad=False`` (the optimizer never
sees them, not even for weight decay) and rows of unseen tasks are neither trained nor used.
Only pt · num_tasks rows are allocated (the released remainder rows are never used, rebq.md §6.16).
The forward uses the rows of the ``learned_tasks`` tasks seen so far (a buffer, so it round-trips
through checkpoints). All layers and the whole batch are computed in one einsum each (rebq.md §6.13).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

EPS = 1e-12  # CODA-P's F.normalize epsilon


def orthonormal_rows(old: Tensor, n: int) -> Tensor:
    """``n`` unit rows per layer, orthogonal to each other and to every row of ``old`` [L, s, F].

    Gram–Schmidt of a random-normal start (drawn from torch's global RNG, on the CPU so that a
    seed gives the same rows on any device), as CODA-P and rebq.md §3.1 do (their uniform init of
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
        task after the first (rebq.md §6.1), kept for ``as_released``.
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
        half = self.length // 2
        return {layer: (p[:, :half], p[:, half:]) for layer, p in zip(self.layers, prompts.unbind(0))}
