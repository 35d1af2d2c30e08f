"""RebQ, Reconstruct before Query (docs/rebq.md §3): decomposed prompt pools on a frozen ViLT.

Three CODA-style pools (:mod:`cmml.methods.prompt_pool`): ``memory`` (deep input prompts that
reconstruct the missing modality's query), ``text`` and ``image`` (prefix key/values in the final
pass). One training step (docs/rebq.md §3.3):

1. frozen query pass H0 (no grad) on the batch plus, for each complete sample, a type-3 copy
   (empty text, real image) and a type-4 copy (real text, all-ones image), built here from the
   batch tensors (docs/rebq.md §3.2);
2. memory prompts: type 0 Mem(q_txt)+Mem(q_img), types 1/3 Mem(q_img), types 2/4 Mem(q_txt);
3. reconstruction pass H1 with those deep prompts in ``memory_layers``;
4. L_rec = MSE(copy's text CLS (type 3) / image CLS (type 4), the source sample's feature);
5. reconstructed queries: type 1 q_txt = H1 text CLS, type 2 q_img = H1 image CLS;
6. final pass with text-pool prefixes T(q_txt) in ``text_layers`` and image-pool prefixes
   I(q_img) in ``image_layers``; logits = head(final text CLS);
7. loss = classification_loss (base class) + alpha · L_rec.

H1 is computed only for the rows that need it: missing samples and copies with grad, complete
samples (the detached h1 target) in a separate no-grad pass; the final pass for the original
samples only.

Decisions on docs/rebq.md §6:

* §6.1 fixed by default: ``begin_task(t)`` Gram–Schmidt-initialises task t's rows orthogonal to
  all earlier rows and makes them the only trainable pool rows. ``as_released: true`` keeps the
  rows of tasks >= 1 at zero (α = 0, gradients exactly 0, so only the head learns after task 0)
  and requires the released H1 target.
* §6.2 no orthogonality loss: the released code has none, CODA-P's default weight is small or 0,
  and old rows are frozen anyway; orthogonality comes from the init only.
* §6.3 ``reconstruction_target``: ``h1`` (released: the memory-prompted output of the complete
  sample, detached) or ``h0`` (its frozen query, which is what complete samples query with).
  Complete samples always get the summed retrieval Mem(q_txt)+Mem(q_img) (it only matters for h1).
* §6.4 raw cosine weights in [-1, 1], no softmax, no top-k.
* §6.5 copies are built in :meth:`loss` only, never at evaluation (:meth:`features`).
* §6.6 n/a: the data layer's dummy image is the all-ones tensor at the real image's shape.
* §6.10 handled by the base class (BCE drops old columns instead of filling them with -100).
* §6.13 vectorised: every pool computes all layers and the whole batch in one einsum.

Ablations: ``alpha: 0`` drops the reconstruction loss (no copies) while the memory pool still
reconstructs the queries, trained by the classification loss alone (the alpha -> 0 limit);
``memory_pool: false`` removes the memory pool: missing queries come from the dummy-filled H0,
no reconstruction (``alpha`` is then unused); ``shared_pool: true`` uses one pool for the text
and the image prefixes (``text_layers`` must equal ``image_layers``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cmml.errors import ConfigError
from cmml.methods.base import Method, TaskContext, TaskInfo
from cmml.methods.prompt_pool import PromptPool
from cmml.models.backbone import Backbone, Encoded, Injection, frozen_pass

LAYER_KEYS = ("memory_layers", "text_layers", "image_layers")
POOL_LAYERS = {"memory": "memory_layers", "text": "text_layers", "image": "image_layers", "shared": "text_layers"}
TARGETS = ("h0", "h1")


class RebQ(Method):
    """Memory, text and image prompt pools on a frozen backbone; see the module docstring."""

    NAME = "rebq"
    HPARAMS: ClassVar[dict[str, type | tuple[type, ...]]] = {
        "pool_size": int, "prompt_length": int, "memory_layers": list, "text_layers": list, "image_layers": list,
        "alpha": float, "reconstruction_target": str, "as_released": bool, "memory_pool": bool, "shared_pool": bool,
    }

    @classmethod
    def check_hparams(cls, hp: dict[str, Any], where: str) -> None:
        """Ranges and consistency; layer indices against the backbone depth are checked at construction."""
        super().check_hparams(hp, where)
        if hp["pool_size"] <= 0:
            raise ConfigError(f"{where}.pool_size must be positive, got {hp['pool_size']}")
        if hp["prompt_length"] <= 0 or hp["prompt_length"] % 2:
            raise ConfigError(f"{where}.prompt_length must be positive and even (key/value halves), "
                              f"got {hp['prompt_length']}")
        for key in LAYER_KEYS:
            layers = hp[key]
            if (not layers or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in layers)
                    or list(layers) != sorted(set(layers))):
                raise ConfigError(f"{where}.{key} must be a non-empty increasing list of layer indices >= 0, "
                                  f"got {layers!r}")
        if hp["alpha"] < 0:
            raise ConfigError(f"{where}.alpha must be >= 0, got {hp['alpha']}")
        if hp["reconstruction_target"] not in TARGETS:
            raise ConfigError(f"{where}.reconstruction_target must be one of {list(TARGETS)}, "
                              f"got {hp['reconstruction_target']!r}")
        if hp["as_released"] and hp["reconstruction_target"] != "h1":
            raise ConfigError(f"{where}.reconstruction_target must be 'h1' when as_released is true "
                              "(the released target)")
        if hp["shared_pool"] and hp["text_layers"] != hp["image_layers"]:
            raise ConfigError(f"{where}.image_layers must equal text_layers when shared_pool is true")

    def __init__(self, backbone: Backbone, info: TaskInfo, hp: dict[str, Any]):
        super().__init__(backbone, info, hp)
        self.check_hparams(hp, "rebq")
        depth, dim = backbone.num_layers, backbone.hidden_size
        for key in LAYER_KEYS:
            if hp[key][-1] >= depth:
                raise ConfigError(f"rebq.{key} lists layer {hp[key][-1]}, but the backbone has {depth} layers "
                                  f"(0..{depth - 1})")
        per_task = hp["pool_size"] // info.num_tasks
        if per_task == 0:
            raise ConfigError(f"rebq.pool_size ({hp['pool_size']}) must be >= the number of tasks ({info.num_tasks})")
        used = per_task if hp["as_released"] else per_task * info.num_tasks
        if used > dim:
            raise ConfigError(f"rebq.pool_size: {used} orthogonal keys needed, but the hidden size is {dim}; "
                              f"use pool_size <= {dim // info.num_tasks * info.num_tasks}")
        names = (["memory"] if hp["memory_pool"] else []) + (["shared"] if hp["shared_pool"] else ["text", "image"])
        self.pools = nn.ModuleDict({name: PromptPool(hp[POOL_LAYERS[name]], hp["pool_size"], hp["prompt_length"], dim,
                                                     info.num_tasks) for name in names})

    def begin_task(self, ctx: TaskContext) -> None:
        """New rows for the task (Gram–Schmidt; zero if ``as_released`` and task >= 1), the only trainable ones."""
        super().begin_task(ctx)
        for pool in self.pools.values():
            pool.begin_task(ctx.task, init=not self.hp["as_released"] or ctx.task == 0)

    def after_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """``as_released``: earlier tasks' pool rows decay as AdamW decays them in the released code.

        There, one parameter tensor holds every row; old rows are detached in the forward pass,
        so they get zero gradients but stay in AdamW, whose decoupled weight decay still shrinks
        them by ``lr * weight_decay`` per step (zero moments, so no Adam update). cmml keeps old
        rows out of the optimizer, so this hook applies exactly that decay (docs/rebq.md §6.17).
        The fixed default leaves frozen rows untouched.
        """
        if not self.hp["as_released"] or self.task == 0:
            return
        group = optimizer.param_groups[0]
        factor = 1.0 - group["lr"] * group["weight_decay"]
        with torch.no_grad():
            for pool in self.pools.values():
                for blocks in (pool.p, pool.k, pool.a):
                    for t in range(self.task):
                        blocks[t].mul_(factor)

    # ---- forward ---------------------------------------------------------------------
    def queries(self, batch: Any, train: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
        """Steps 1-5: (q_txt, q_img) [B, D] of the original samples and L_rec (None when absent).

        ``train`` adds the reconstruction copies (docs/rebq.md §3.2); evaluation never does (§6.5).
        """
        codes = batch.codes
        b = codes.shape[0]
        ids, mask, pix, types = batch.input_ids, batch.attention_mask, batch.pixel_values, codes
        pm = batch.pixel_mask  # None for fixed-size images
        memory: PromptPool | None = self.pools["memory"] if "memory" in self.pools else None
        src = codes.new_zeros(0)
        if train and memory is not None and self.hp["alpha"] > 0:
            src = (codes == 0).nonzero().squeeze(1)
            c = src.numel()
            if c:
                ids = torch.cat([ids, batch.empty_ids.expand(c, -1), ids[src]])
                mask = torch.cat([mask, batch.empty_mask.expand(c, -1), mask[src]])
                pix = torch.cat([pix, pix[src], batch.empty_pixels.expand_as(pix[src])])
                if pm is not None:
                    pm = torch.cat([pm, pm[src], batch.empty_pixel_mask.expand_as(pm[src])])
                types = torch.cat([codes, codes.new_full((c,), 3), codes.new_full((c,), 4)])
        h0 = frozen_pass(self.backbone, ids, mask, pix, pm)
        q_txt, q_img = h0.text_cls[:b], h0.image_cls[:b]
        if memory is None:
            return q_txt, q_img, None
        rows = (types != 0).nonzero().squeeze(1)  # missing samples and copies: H1 with grad
        if rows.numel() == 0:
            return q_txt, q_img, None
        h1 = self._memory_pass(memory, h0, ids, mask, pix, pm, types, rows)
        txt = h0.text_cls.index_copy(0, rows, h1.text_cls)  # H1 where computed, H0 elsewhere
        img = h0.image_cls.index_copy(0, rows, h1.image_cls)
        q_txt = torch.where((codes == 1)[:, None], txt[:b], q_txt)
        q_img = torch.where((codes == 2)[:, None], img[:b], q_img)
        c = src.numel()
        if not c:
            return q_txt, q_img, None
        if self.hp["reconstruction_target"] == "h1":  # detached: its own no-grad pass saves a backward
            with torch.no_grad():
                h1_src = self._memory_pass(memory, h0, ids, mask, pix, pm, types, src)
            target = torch.cat([h1_src.text_cls, h1_src.image_cls])
        else:
            target = torch.cat([h0.text_cls[src], h0.image_cls[src]])
        pred = torch.cat([txt[b:b + c], img[b + c:]])
        return q_txt, q_img, F.mse_loss(pred.float(), target.float())

    def _memory_pass(self, memory: PromptPool, h0: Encoded, ids: Tensor, mask: Tensor, pix: Tensor,
                     pm: Tensor | None, types: Tensor, rows: Tensor) -> Encoded:
        """Steps 2-3 for ``rows``: memory prompts from the H0 queries (by type), then the H1 pass."""
        t = types[rows]
        use_txt = ((t == 0) | (t == 2) | (t == 4)).float()[None, :, None]
        use_img = ((t == 0) | (t == 1) | (t == 3)).float()[None, :, None]
        n = rows.numel()
        alpha = memory.weights(torch.cat([h0.text_cls[rows], h0.image_cls[rows]]))
        prompts = memory.compose(alpha[:, :n] * use_txt + alpha[:, n:] * use_img)
        return self.backbone(ids[rows], mask[rows], pix[rows], Injection(deep_prompts=memory.deep_prompts(prompts)),
                             pixel_mask=None if pm is None else pm[rows])

    def final(self, batch: Any, q_txt: Tensor, q_img: Tensor) -> Tensor:
        """Step 6: final text [CLS] features [B, D] with the text and image pools' prefixes."""
        if "shared" in self.pools:
            pool = self.pools["shared"]
            both = pool.compose(pool.weights(torch.cat([q_txt, q_img])))
            parts = [(pool, both[:, : q_txt.shape[0]]), (pool, both[:, q_txt.shape[0]:])]
        else:
            parts = [(self.pools[name], self.pools[name].compose(self.pools[name].weights(q)))
                     for name, q in (("text", q_txt), ("image", q_img))]
        prefixes: dict[int, list[tuple[Tensor, Tensor]]] = {}
        for pool, prompts in parts:
            for layer, kv in pool.prefixes(prompts).items():
                prefixes.setdefault(layer, []).append(kv)
        return self.backbone(batch.input_ids, batch.attention_mask, batch.pixel_values,
                             Injection(prefixes=prefixes), pixel_mask=batch.pixel_mask).text_cls

    def features(self, batch: Any) -> Tensor:
        """Evaluation features: reconstructed queries (no copies, no loss), then the final pass."""
        q_txt, q_img, _ = self.queries(batch)
        return self.final(batch, q_txt, q_img)

    def loss(self, batch: Any, task: int) -> tuple[Tensor, dict[str, float]]:
        """Classification loss + alpha · L_rec (step 7)."""
        q_txt, q_img, rec = self.queries(batch, train=True)
        cls = self.classification_loss(self.head(self.final(batch, q_txt, q_img)), batch.labels, task)
        logs = {"cls": float(cls.detach())}
        if rec is None:
            return cls, logs
        logs["rec"] = float(rec.detach())
        return cls + self.hp["alpha"] * rec, logs


METHOD = RebQ
