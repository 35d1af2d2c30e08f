"""L2P, Learning to Prompt (Wang et al., CVPR 2022): a key-matched prompt pool on a frozen backbone.

A pool of ``pool_size`` prompts of ``prompt_length`` tokens, each with a learnable key
(:class:`~cmml.methods.prompt_pool.KeyedPrompts`). The query is the frozen backbone's text [CLS]
on the unprompted input; the ``top_k`` keys of highest cosine pick their prompts, which are
concatenated and inserted as input tokens (prompt tuning, as in the paper: a deep prompt at
layer 0 only, carried through every layer). The loss adds ``pull_coeff`` times the surrogate
loss Σ (1 − cos(query, selected key)), which pulls the chosen keys to the queries.

Selection: with ``batchwise_prompt`` the training batch uses the ``top_k`` prompts chosen most
often over its samples (the releases' batch-wise majority vote; ties to the lower index), so
that prompts specialise per task; without it each sample uses its own top-k. Evaluation always
selects per sample -- the releases vote over the test batch as well, which makes a prediction
depend on which other samples share its batch (and, with single-task test batches, leaks the
task identity). The whole pool and every key stay trainable on every task, as in the paper.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from cmml.errors import ConfigError
from cmml.methods.base import Method, TaskInfo
from cmml.methods.prompt_pool import KeyedPrompts, frozen_query
from cmml.models.backbone import Backbone, Injection


class L2P(Method):
    """Prompt pool with learnable keys, top-k selection by cosine; see the module docstring."""

    NAME = "l2p"
    HPARAMS: ClassVar[dict[str, type | tuple[type, ...]]] = {
        "pool_size": int, "prompt_length": int, "top_k": int, "pull_coeff": float, "batchwise_prompt": bool,
    }

    @classmethod
    def check_hparams(cls, hp: dict[str, Any], where: str) -> None:
        """Ranges: positive sizes, 1 <= top_k <= pool_size, pull_coeff >= 0."""
        super().check_hparams(hp, where)
        for key in ("pool_size", "prompt_length"):
            if hp[key] <= 0:
                raise ConfigError(f"{where}.{key} must be positive, got {hp[key]}")
        if not 1 <= hp["top_k"] <= hp["pool_size"]:
            raise ConfigError(f"{where}.top_k must be in [1, pool_size = {hp['pool_size']}], got {hp['top_k']}")
        if hp["pull_coeff"] < 0:
            raise ConfigError(f"{where}.pull_coeff must be >= 0, got {hp['pull_coeff']}")

    def __init__(self, backbone: Backbone, info: TaskInfo, hp: dict[str, Any]):
        super().__init__(backbone, info, hp)
        self.check_hparams(hp, self.NAME)
        dim = backbone.hidden_size
        self.pool = KeyedPrompts(hp["pool_size"], (hp["prompt_length"], dim), dim)

    def select(self, sim: Tensor, vote: bool) -> Tensor:
        """Indices [B, top_k] of the prompts each sample uses: its own top-k, or with ``vote`` the batch's
        ``top_k`` most often chosen ones."""
        k = self.hp["top_k"]
        idx = sim.topk(k, dim=1).indices
        if not vote:
            return idx
        counts = torch.bincount(idx.flatten(), minlength=sim.shape[1])
        major = torch.argsort(-counts, stable=True)[:k]
        return major.expand(sim.shape[0], k)

    def prompted(self, batch: Any, vote: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """Text [CLS] features [B, D] with the selected prompts, the cosines [B, pool] and the indices [B, k]."""
        sim = self.pool.similarity(frozen_query(self.backbone, batch))
        idx = self.select(sim, vote)
        tokens = self.pool.select(idx).flatten(1, 2)  # [B, top_k * length, D]
        enc = self.backbone(batch.input_ids, batch.attention_mask, batch.pixel_values,
                            Injection(deep_prompts={0: tokens}), pixel_mask=batch.pixel_mask)
        return enc.text_cls, sim, idx

    def features(self, batch: Any) -> Tensor:
        """Prompted text [CLS], prompts selected per sample (evaluation)."""
        return self.prompted(batch)[0]

    def loss(self, batch: Any, task: int) -> tuple[Tensor, dict[str, float]]:
        """Classification loss + ``pull_coeff`` · surrogate key–query loss (batch-wise vote if ``batchwise_prompt``)."""
        feats, sim, idx = self.prompted(batch, vote=self.hp["batchwise_prompt"])
        cls = self.classification_loss(self.head(feats), batch.labels, task)
        pull = KeyedPrompts.pull_loss(sim, idx)
        return cls + self.hp["pull_coeff"] * pull, {"cls": float(cls.detach()), "pull": float(pull.detach())}


METHOD = L2P
