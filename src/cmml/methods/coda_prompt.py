"""CODA-Prompt (Smith et al., CVPR 2023): prompts as attention-weighted sums of learnt components.

One :class:`~cmml.methods.prompt_pool.PromptPool` (the pool RebQ's three pools are made of) in
``layers``: per layer, components P, keys K and attention vectors A. The query q is the frozen
backbone's text [CLS] on the unprompted input; component k weighs α_k = cos(q ⊙ A_k, K_k) and
the prompt Σ_k α_k P_k is split into key and value prefixes (prefix tuning) of its layer.

Per task a new block of ``pool_size // num_tasks`` components (with their keys and attention
vectors) is Gram–Schmidt-initialised orthogonal to every earlier one and is the only block
trained; earlier blocks are frozen (out of the optimiser) but still used. ``ortho_mu`` > 0 adds
the orthogonality loss over the active rows (:meth:`PromptPool.ortho_penalty`). The head is the
common linear head on the prompted text [CLS].
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor

from cmml.errors import ConfigError
from cmml.methods.base import Method, TaskContext, TaskInfo
from cmml.methods.prompt_pool import PromptPool, check_layers, frozen_query
from cmml.models.backbone import Backbone, Injection


class CodaPrompt(Method):
    """One CODA component pool giving prefixes in ``layers``; see the module docstring."""

    NAME = "coda_prompt"
    HPARAMS: ClassVar[dict[str, type | tuple[type, ...]]] = {
        "pool_size": int, "prompt_length": int, "layers": list, "ortho_mu": float,
    }

    @classmethod
    def check_hparams(cls, hp: dict[str, Any], where: str) -> None:
        """Ranges; the layers against the backbone depth and the pool against its width are checked at construction."""
        super().check_hparams(hp, where)
        if hp["pool_size"] <= 0:
            raise ConfigError(f"{where}.pool_size must be positive, got {hp['pool_size']}")
        if hp["prompt_length"] <= 0 or hp["prompt_length"] % 2:
            raise ConfigError(f"{where}.prompt_length must be positive and even (key/value halves), "
                              f"got {hp['prompt_length']}")
        check_layers(hp["layers"], "layers", where)
        if hp["ortho_mu"] < 0:
            raise ConfigError(f"{where}.ortho_mu must be >= 0, got {hp['ortho_mu']}")

    def __init__(self, backbone: Backbone, info: TaskInfo, hp: dict[str, Any]):
        super().__init__(backbone, info, hp)
        self.check_hparams(hp, self.NAME)
        dim = backbone.hidden_size
        check_layers(hp["layers"], "layers", self.NAME, backbone.num_layers)
        per_task = hp["pool_size"] // info.num_tasks
        if per_task == 0:
            raise ConfigError(f"{self.NAME}.pool_size ({hp['pool_size']}) must be >= the number of tasks "
                              f"({info.num_tasks})")
        if per_task * info.num_tasks > dim:
            raise ConfigError(f"{self.NAME}.pool_size: {per_task * info.num_tasks} orthogonal keys needed, but the "
                              f"hidden size is {dim}; use pool_size <= {dim // info.num_tasks * info.num_tasks}")
        self.pool = PromptPool(hp["layers"], hp["pool_size"], hp["prompt_length"], dim, info.num_tasks)

    def begin_task(self, ctx: TaskContext) -> None:
        """The task's block: Gram–Schmidt-initialised on first use, the only trainable one."""
        super().begin_task(ctx)
        self.pool.begin_task(ctx.task)

    def features(self, batch: Any) -> Tensor:
        """Prompted text [CLS]: pool weights from the frozen query, composed prompts as prefixes."""
        prompts = self.pool.compose(self.pool.weights(frozen_query(self.backbone, batch)))
        prefixes = {layer: [kv] for layer, kv in self.pool.prefixes(prompts).items()}
        return self.backbone(batch.input_ids, batch.attention_mask, batch.pixel_values,
                             Injection(prefixes=prefixes), pixel_mask=batch.pixel_mask).text_cls

    def loss(self, batch: Any, task: int) -> tuple[Tensor, dict[str, float]]:
        """Classification loss, plus ``ortho_mu`` times the orthogonality penalty when > 0."""
        cls = self.classification_loss(self.logits(batch), batch.labels, task)
        logs = {"cls": float(cls.detach())}
        if self.hp["ortho_mu"] == 0:
            return cls, logs
        ortho = self.pool.ortho_penalty()
        logs["ortho"] = float(ortho.detach())
        return cls + self.hp["ortho_mu"] * ortho, logs


METHOD = CodaPrompt
