"""Parameter-efficient adapters: a frozen backbone, named feature sites, one parameter set per key.

An :class:`AdapterSet` holds a separate, small set of parameters for every *key* (a missing-modality
combination such as ``image+text`` / ``image`` / ``text``, or a continual task) on top of one
frozen :class:`~cmml.models.backbone.Backbone`; :meth:`AdapterSet.encode` runs the backbone with
one key's set active, and :func:`encode_routed` runs a batch whose samples carry different keys
(each group of rows through its own set, the outputs put back in batch order). Three kinds:

* :class:`SSF` -- scale and shift ``h' = gamma * h + beta`` (one ``[D]`` pair per feature site)
  at the backbone's adapter sites (:func:`feature_sites`): after the embeddings, after each
  layer's attention and MLP branch, and after the final LayerNorm (the fused output). Identity
  init (gamma 1, beta 0) makes the adapted model start as the frozen one, bit for bit; ``normal``
  draws gamma ~ N(1, std), beta ~ N(0, std) as the SSF authors do.
* :class:`LoRA` -- low-rank updates of the named linear layers of every encoder layer, injected
  with ``peft`` (one named peft adapter per key; B starts at zero, so again an exact identity).
* :class:`BitFit` -- a private copy of every bias of the backbone per key (init: the frozen
  biases), substituted for the frozen ones during the forward pass.

Only the active key's parameters enter the graph, so a step on one key's data leaves every other
key's parameters without a gradient.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from itertools import combinations as _subsets
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from cmml.errors import ConfigError, DataError
from cmml.models.backbone import Backbone, Encoded, Injection

SSF_INITS = ("identity", "normal")
LORA_TARGETS = ("query", "key", "value", "attn_out", "fc1", "fc2")  # per encoder layer
_LORA_MODULES = {"query": "attention.attention.query", "key": "attention.attention.key",
                 "value": "attention.attention.value", "attn_out": "attention.output.dense",
                 "fc1": "intermediate.dense", "fc2": "output.dense"}


def combinations(modalities: Sequence[str]) -> list[tuple[str, ...]]:
    """Every non-empty subset of ``modalities`` (in their order), the complete one first, then by size."""
    mods = tuple(modalities)
    return [c for n in range(len(mods), 0, -1) for c in _subsets(mods, n)]


def combination_key(combo: Sequence[str]) -> str:
    """``image+text`` style name of a combination of available modalities."""
    return "+".join(combo)


def combination_index(present: Tensor, modalities: Sequence[str], combos: Sequence[Sequence[str]]) -> Tensor:
    """int64 [B]: the index in ``combos`` of each sample's available modalities (bool ``present`` [B, M])."""
    cols = {m: i for i, m in enumerate(modalities)}
    patterns = torch.zeros(len(combos), len(cols), dtype=torch.bool)
    for k, combo in enumerate(combos):
        for m in combo:
            patterns[k, cols[m]] = True
    match = (present.cpu()[:, None, :] == patterns[None]).all(-1)  # [B, K]
    found = match.any(1)
    if not bool(found.all()):
        row = int((~found).nonzero()[0])
        raise DataError(f"sample {row} has modalities {present[row].tolist()} (columns {list(modalities)}), "
                        f"which is none of the combinations {[combination_key(c) for c in combos]}")
    return match.float().argmax(1)


def route(index: Tensor, run: Callable[[int, Tensor], Tensor]) -> Tensor:
    """``run(k, rows)`` for every distinct value k of ``index`` [B], outputs scattered back to batch order."""
    out: Tensor | None = None
    for k in index.unique().tolist():
        rows = (index == k).nonzero().flatten()
        y = run(int(k), rows)
        if out is None:
            out = y.new_empty((len(index), *y.shape[1:]))
        out[rows.to(y.device)] = y
    if out is None:
        raise DataError("cannot route an empty batch")
    return out


def feature_sites(backbone: Backbone) -> list[tuple[str, int]]:
    """The backbone's adapter sites as ``(site, layer)``: embed, attn/mlp per layer, final (after fusion)."""
    return [("embed", -1), *((s, li) for li in range(backbone.num_layers) for s in ("attn", "mlp")),
            ("final", backbone.num_layers)]


def backbone_size(backbone: Backbone) -> int:
    """Parameters of the backbone itself (injected adapter weights excluded)."""
    return sum(p.numel() for n, p in backbone.named_parameters() if "lora_" not in n)


class AdapterSet(nn.Module):
    """One parameter set per key on a frozen backbone (kept outside the module's own state)."""

    KIND: ClassVar[str] = ""

    def __init__(self, backbone: Backbone, keys: Sequence[str]):
        super().__init__()
        if not keys or len(set(keys)) != len(keys):
            raise ConfigError(f"{self.KIND}: adapter keys must be distinct and non-empty, got {list(keys)}")
        self.keys = list(keys)
        self._backbone = [backbone]  # a list: not a submodule, so the backbone is neither saved nor counted here

    @property
    def backbone(self) -> Backbone:
        return self._backbone[0]

    def named_set(self, key: str) -> dict[str, nn.Parameter]:
        """The parameters of ``key``'s set by name."""
        raise NotImplementedError

    def set_parameters(self, key: str) -> list[nn.Parameter]:
        """The trainable parameters of ``key``'s set."""
        return list(self.named_set(key).values())

    def count(self, key: str) -> int:
        """Number of trainable values in ``key``'s set."""
        return sum(p.numel() for p in self.set_parameters(key))

    def encode(self, key: str, input_ids: Tensor, attention_mask: Tensor, pixel_values: Tensor) -> Encoded:
        """Backbone output with ``key``'s set active."""
        raise NotImplementedError

    def adapter_state(self) -> dict[str, Tensor]:
        """Every set's tensors (CPU copies) under ``<key>/<name>``."""
        return {f"{k}/{n}": p.detach().cpu().clone() for k in self.keys for n, p in self.named_set(k).items()}

    def load_adapter_state(self, state: dict[str, Tensor], source: str) -> None:
        """Load :meth:`adapter_state` output; DataError naming ``source`` if keys or shapes differ."""
        own = {f"{k}/{n}": p for k in self.keys for n, p in self.named_set(k).items()}
        if set(own) != set(state):
            missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
            raise DataError(f"{source}: {self.KIND} adapter state does not fit: missing {missing[:4]}, unexpected {extra[:4]}")
        with torch.no_grad():
            for k, p in own.items():
                if p.shape != state[k].shape:
                    raise DataError(f"{source}: adapter tensor {k!r} has shape {tuple(state[k].shape)}, expected {tuple(p.shape)}")
                p.copy_(state[k])


class SSF(AdapterSet):
    """Scale-and-shift feature modulation at every feature site, one (gamma, beta) table per key."""

    KIND = "ssf"

    def __init__(self, backbone: Backbone, keys: Sequence[str], init: str = "identity", std: float = 0.02):
        super().__init__(backbone, keys)
        if init not in SSF_INITS:
            raise ConfigError(f"ssf: init must be one of {list(SSF_INITS)}, got {init!r}")
        self.sites = {s: i for i, s in enumerate(feature_sites(backbone))}
        shape = (len(self.sites), backbone.hidden_size)
        self.scale = nn.ParameterDict()
        self.shift = nn.ParameterDict()
        for k in self.keys:
            gamma, beta = torch.ones(shape), torch.zeros(shape)
            if init == "normal":
                gamma, beta = gamma + std * torch.randn(shape), std * torch.randn(shape)
            self.scale[k], self.shift[k] = nn.Parameter(gamma), nn.Parameter(beta)

    def named_set(self, key: str) -> dict[str, nn.Parameter]:
        return {"scale": self.scale[key], "shift": self.shift[key]}

    def modulate(self, key: str) -> Callable[[str, int, Tensor], Tensor]:
        """The backbone adapter callable of ``key``'s set."""
        gamma, beta = self.scale[key], self.shift[key]

        def adapt(site: str, layer: int, h: Tensor) -> Tensor:
            i = self.sites[(site, layer)]
            return h * gamma[i].to(h.dtype) + beta[i].to(h.dtype)

        return adapt

    def encode(self, key: str, input_ids: Tensor, attention_mask: Tensor, pixel_values: Tensor) -> Encoded:
        return self.backbone(input_ids, attention_mask, pixel_values, Injection(adapter=self.modulate(key)))


class BitFit(AdapterSet):
    """A private copy of every backbone bias per key, swapped in for the frozen biases."""

    KIND = "bitfit"

    def __init__(self, backbone: Backbone, keys: Sequence[str]):
        super().__init__(backbone, keys)
        self.names = [n for n, _ in backbone.named_parameters() if n.endswith(".bias")]
        if not self.names:
            raise ConfigError("bitfit: the backbone has no bias parameters")
        base = dict(backbone.named_parameters())
        self.biases = nn.ModuleDict({k: nn.ParameterList([nn.Parameter(base[n].detach().clone()) for n in self.names])
                                     for k in self.keys})

    def named_set(self, key: str) -> dict[str, nn.Parameter]:
        return dict(zip(self.names, self.biases[key]))

    def encode(self, key: str, input_ids: Tensor, attention_mask: Tensor, pixel_values: Tensor) -> Encoded:
        from torch.func import functional_call

        return functional_call(self.backbone, self.named_set(key), (input_ids, attention_mask, pixel_values),
                               strict=False, tie_weights=False)


class LoRA(AdapterSet):
    """peft LoRA on the named linear layers of every encoder layer, one peft adapter per key."""

    KIND = "lora"

    def __init__(self, backbone: Backbone, keys: Sequence[str], rank: int, alpha: float, targets: Sequence[str]):
        from peft import LoraConfig, inject_adapter_in_model

        super().__init__(backbone, keys)
        bad = sorted(set(targets) - set(LORA_TARGETS))
        if bad or not targets or rank <= 0:
            raise ConfigError(f"lora: targets must be a non-empty subset of {list(LORA_TARGETS)} and rank > 0, "
                              f"got targets {list(targets)}, rank {rank}")
        modules = [f"encoder.layer.{li}.{_LORA_MODULES[t]}" for li in range(backbone.num_layers) for t in targets]
        self.peft_names = {k: f"c{i}" for i, k in enumerate(self.keys)}  # peft adapter names must be identifiers
        for k in self.keys:
            cfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=modules, bias="none")
            with warnings.catch_warnings():  # several adapters in one model is the point here
                warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                inject_adapter_in_model(cfg, backbone.vilt, adapter_name=self.peft_names[k])
        backbone.requires_grad_(False)

    def _layers(self) -> list[Any]:
        from peft.tuners.lora import LoraLayer

        return [m for m in self.backbone.modules() if isinstance(m, LoraLayer)]

    def named_set(self, key: str) -> dict[str, nn.Parameter]:
        tag = f".{self.peft_names[key]}."
        return {n: p for n, p in self.backbone.named_parameters() if "lora_" in n and tag in n}

    def encode(self, key: str, input_ids: Tensor, attention_mask: Tensor, pixel_values: Tensor) -> Encoded:
        lora = [p for k in self.keys for p in self.named_set(k).values()]
        flags = [p.requires_grad for p in lora]
        for layer in self._layers():
            layer.set_adapter(self.peft_names[key])  # routes the forward through ``key``'s weights (and sets flags)
        for p, f in zip(lora, flags):  # which set trains is the caller's choice (:func:`train_only`), not peft's
            p.requires_grad_(f)
        return self.backbone(input_ids, attention_mask, pixel_values)


def build_adapters(kind: str, backbone: Backbone, keys: Sequence[str], hp: dict[str, Any]) -> AdapterSet:
    """An adapter set of ``kind`` (ssf | lora | bitfit) with its hyper-parameters from ``hp``."""
    if kind == "ssf":
        return SSF(backbone, keys, hp["init"], hp["init_std"])
    if kind == "lora":
        return LoRA(backbone, keys, hp["rank"], hp["alpha"], hp["targets"])
    if kind == "bitfit":
        return BitFit(backbone, keys)
    raise ConfigError(f"unknown adapter kind {kind!r}; known: ['bitfit', 'lora', 'ssf']")


def train_only(adapters: AdapterSet, key: str | None) -> None:
    """Only ``key``'s parameters require grad (None: none), the backbone stays frozen."""
    for k in adapters.keys:
        for p in adapters.set_parameters(k):
            p.requires_grad_(k == key)


def encode_routed(adapters: AdapterSet, index: Tensor, input_ids: Tensor, attention_mask: Tensor,
                  pixel_values: Tensor) -> Tensor:
    """[B, N, D] hidden states, sample b through set ``adapters.keys[index[b]]`` (a mixed batch)."""
    def one(k: int, rows: Tensor) -> Tensor:
        r = rows.to(input_ids.device)
        return adapters.encode(adapters.keys[k], input_ids[r], attention_mask[r], pixel_values[r]).hidden

    return route(index, one)
