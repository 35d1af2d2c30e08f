"""DualPrompt (Wang et al., ECCV 2022): a shared G-prompt plus task-specific E-prompts, by prefix tuning.

* **G-prompt**: one learnt prompt per layer of ``g_layers``, shared by every task and trained on
  all of them; ``g_length`` key plus ``g_length`` value prefix tokens per layer.
* **E-prompts**: one per task, each with a learnable key
  (:class:`~cmml.methods.prompt_pool.KeyedPrompts`), ``e_length`` key plus ``e_length`` value
  prefix tokens in each layer of ``e_layers``. Training task t uses E-prompt t for every sample
  and adds ``pull_coeff`` · mean(1 − cos(query, key_t)). Evaluation picks, per sample, the
  E-prompt whose key is closest (cosine) to the query among the tasks learnt so far.

The query is the frozen backbone's text [CLS] on the unprompted input. Where a layer is in both
lists, the G and E prefixes are both appended. Every prompt starts from U(0, 1) as in the PyTorch
release. As there, all E-prompts stay in the optimiser; only the current one gets gradients.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from cmml.errors import ConfigError
from cmml.methods.base import Method, TaskContext, TaskInfo
from cmml.methods.prompt_pool import KeyedPrompts, check_layers, frozen_query, split_prefixes
from cmml.models.backbone import Backbone, Injection


class DualPrompt(Method):
    """G-prompt in ``g_layers``, key-selected E-prompts in ``e_layers``; see the module docstring."""

    NAME = "dualprompt"
    HPARAMS: ClassVar[dict[str, type | tuple[type, ...]]] = {
        "g_length": int, "g_layers": list, "e_length": int, "e_layers": list, "pull_coeff": float,
    }

    @classmethod
    def check_hparams(cls, hp: dict[str, Any], where: str) -> None:
        """Ranges; the layers against the backbone depth are checked at construction."""
        super().check_hparams(hp, where)
        for key in ("g_length", "e_length"):
            if hp[key] <= 0:
                raise ConfigError(f"{where}.{key} must be positive, got {hp[key]}")
        for key in ("g_layers", "e_layers"):
            check_layers(hp[key], key, where)
        if hp["pull_coeff"] < 0:
            raise ConfigError(f"{where}.pull_coeff must be >= 0, got {hp['pull_coeff']}")

    def __init__(self, backbone: Backbone, info: TaskInfo, hp: dict[str, Any]):
        super().__init__(backbone, info, hp)
        self.check_hparams(hp, self.NAME)
        dim = backbone.hidden_size
        for key in ("g_layers", "e_layers"):
            check_layers(hp[key], key, self.NAME, backbone.num_layers)
        self.g_prompt = nn.Parameter(torch.rand(len(hp["g_layers"]), 2 * hp["g_length"], dim))
        self.e_prompts = KeyedPrompts(info.num_tasks, (len(hp["e_layers"]), 2 * hp["e_length"], dim), dim)
        self.register_buffer("learned_tasks", torch.zeros((), dtype=torch.long))

    def begin_task(self, ctx: TaskContext) -> None:
        """Task ``ctx.task``'s E-prompt joins the ones evaluation chooses from."""
        super().begin_task(ctx)
        self.learned_tasks.fill_(max(int(self.learned_tasks), ctx.task + 1))

    def choose(self, sim: Tensor) -> Tensor:
        """Per-sample E-prompt index [B]: the closest key among the learnt tasks'."""
        n = int(self.learned_tasks)
        if n == 0:
            raise RuntimeError("DualPrompt used before begin_task(0)")
        return sim[:, :n].argmax(dim=1)

    def prompted(self, batch: Any, task: int | None) -> tuple[Tensor, Tensor, Tensor]:
        """Text [CLS] [B, D] with G and E prefixes, the key cosines [B, tasks] and the E-prompt indices [B].

        ``task`` given (training): its E-prompt for every sample; None: chosen by key match.
        """
        sim = self.e_prompts.similarity(frozen_query(self.backbone, batch))
        b = sim.shape[0]
        idx = sim.new_full((b,), task, dtype=torch.long) if task is not None else self.choose(sim)
        e = self.e_prompts.select(idx).transpose(0, 1)  # [layers, B, 2·e_length, D]
        g = self.g_prompt[:, None].expand(-1, b, -1, -1)
        prefixes: dict[int, list[tuple[Tensor, Tensor]]] = {}
        for layers, prompts in ((self.hp["g_layers"], g), (self.hp["e_layers"], e)):
            for layer, kv in split_prefixes(layers, prompts).items():
                prefixes.setdefault(layer, []).append(kv)
        enc = self.backbone(batch.input_ids, batch.attention_mask, batch.pixel_values, Injection(prefixes=prefixes),
                            pixel_mask=batch.pixel_mask)
        return enc.text_cls, sim, idx

    def features(self, batch: Any) -> Tensor:
        """Evaluation: E-prompt chosen per sample by key matching."""
        return self.prompted(batch, None)[0]

    def loss(self, batch: Any, task: int) -> tuple[Tensor, dict[str, float]]:
        """Classification loss with the task's own E-prompt + ``pull_coeff`` · key–query loss of its key."""
        feats, sim, idx = self.prompted(batch, task)
        cls = self.classification_loss(self.head(feats), batch.labels, task)
        pull = KeyedPrompts.pull_loss(sim, idx[:, None])
        return cls + self.hp["pull_coeff"] * pull, {"cls": float(cls.detach()), "pull": float(pull.detach())}


METHOD = DualPrompt
