"""MAP, missing-aware prompts (Lee et al., CVPR 2023): one prompt set per missing pattern.

Three learnt prompt sets -- complete, text missing, image missing -- each with ``prompt_length``
tokens in every layer of ``layers``; a sample uses the set of its missing code (0, 1, 2), known
at training and at test. ``position``:

* ``input``: the tokens enter the sequence as deep prompts (:class:`~cmml.models.backbone.Injection`):
  inserted at the first listed layer and replaced by that layer's set at each later one (MAP
  keeps every layer's tokens, so its sequence grows by ``prompt_length`` per listed layer);
* ``attention``: the first half of the tokens are extra keys, the second half extra values of
  that layer's self-attention (prefix tuning; ``prompt_length`` even).

Each set starts at zero except one token set to ones at a position of its own (complete 0, image
missing 1, text missing 2; with ``attention`` also the same offsets in the value half), as MAP
initialises them. ``head: mlp`` is MAP's classifier on the text [CLS]: a tanh pooler
(new here, the backbone has none) and Linear(d, 2d), LayerNorm, GELU, Linear(2d, classes),
weights drawn from N(0, 0.02) as ViLT initialises heads; ``head: linear`` is the common linear
head. MAP has no continual mechanism: one set of prompts and the head are trained on the tasks
one after another.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from cmml.errors import ConfigError
from cmml.methods.base import Method, TaskInfo
from cmml.methods.prompt_pool import check_layers, split_prefixes
from cmml.models.backbone import Backbone, Injection

POSITIONS = ("input", "attention")
HEADS = ("mlp", "linear")
MARK = (0, 2, 1)  # token set to ones at init, per missing code: complete, text missing, image missing


def map_head(dim: int, num_classes: int) -> nn.Sequential:
    """MAP's pooler + MLP classifier, N(0, 0.02) weights, zero biases, unit LayerNorm."""
    head = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, 2 * dim), nn.LayerNorm(2 * dim), nn.GELU(),
                         nn.Linear(2 * dim, num_classes))
    for module in head:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
    return head


class MapPrompt(Method):
    """Missing-aware prompt sets selected by each sample's missing code; see the module docstring."""

    NAME = "map_prompt"
    HPARAMS: ClassVar[dict[str, type | tuple[type, ...]]] = {
        "prompt_length": int, "layers": list, "position": str, "head": str,
    }

    @classmethod
    def check_hparams(cls, hp: dict[str, Any], where: str) -> None:
        """Choices and the length each position needs for its init marks."""
        super().check_hparams(hp, where)
        if hp["position"] not in POSITIONS:
            raise ConfigError(f"{where}.position must be one of {list(POSITIONS)}, got {hp['position']!r}")
        if hp["head"] not in HEADS:
            raise ConfigError(f"{where}.head must be one of {list(HEADS)}, got {hp['head']!r}")
        length = hp["prompt_length"]
        if hp["position"] == "input" and length < 3:
            raise ConfigError(f"{where}.prompt_length must be >= 3 (one init mark per set), got {length}")
        if hp["position"] == "attention" and (length < 6 or length % 2):
            raise ConfigError(f"{where}.prompt_length must be even and >= 6 with position attention "
                              f"(key/value halves, one init mark per set in each), got {length}")
        check_layers(hp["layers"], "layers", where)

    def __init__(self, backbone: Backbone, info: TaskInfo, hp: dict[str, Any]):
        super().__init__(backbone, info, hp)
        self.check_hparams(hp, self.NAME)
        check_layers(hp["layers"], "layers", self.NAME, backbone.num_layers)
        dim, length = backbone.hidden_size, hp["prompt_length"]
        prompts = torch.zeros(len(MARK), len(hp["layers"]), length, dim)
        for code, mark in enumerate(MARK):
            prompts[code, :, mark] = 1.0
            if hp["position"] == "attention":
                prompts[code, :, length // 2 + mark] = 1.0
        self.prompts = nn.Parameter(prompts)
        if hp["head"] == "mlp":
            self.head = map_head(dim, info.num_classes)

    def injection(self, codes: Tensor) -> Injection:
        """Each sample's prompt set (by missing code) as deep prompts or prefixes in ``layers``."""
        chosen = self.prompts[codes].transpose(0, 1)  # [layers, B, length, D]
        if self.hp["position"] == "input":
            return Injection(deep_prompts=dict(zip(self.hp["layers"], chosen.unbind(0))))
        return Injection(prefixes={layer: [kv] for layer, kv in split_prefixes(self.hp["layers"], chosen).items()})

    def features(self, batch: Any) -> Tensor:
        """Text [CLS] with each sample's missing-aware prompts."""
        return self.backbone(batch.input_ids, batch.attention_mask, batch.pixel_values,
                             self.injection(batch.codes), pixel_mask=batch.pixel_mask).text_cls


METHOD = MapPrompt
