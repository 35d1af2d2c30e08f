"""The micl model: frozen modality encoders, per-modality adapters and a causal LM with LoRA.

As in the released code (projection-only, no Q-Former): each modality's frozen encoder gives a grid
of feature tokens; a trainable LayerNorm, for audio and video a 2×2 stride-2 Conv2d + GELU pooling,
and an MLP ``Linear(C, H)–GELU–Linear(H, H)`` map them into the LM's embedding space. The sequence
is ``cue + modality tokens + instruction + target + eos``, cross-entropy on the target only. The LM
is any ``AutoModelForCausalLM``; LoRA (``peft``) adapts its attention projections. Only the adapters
and the LoRA weights train.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from cmml.errors import DataError
from cmml.families.micl.data import ATTRIBUTE_HEADS, FRAMES, MODALITIES, cue, encoder_input

POOLED = {"image": False, "video": True, "audio": True}
LORA_TARGETS = {"gpt2": ["c_attn"], "llama": ["q_proj", "v_proj"]}  # by config.model_type; else q_proj/v_proj


class Encoder(nn.Module):
    """A small convolutional encoder: input grid -> (B, C, h, w) feature grid (stride 4)."""

    def __init__(self, in_ch: int, width: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(in_ch, width // 2, 3, 2, 1), nn.GELU(), nn.Conv2d(width // 2, width, 3, 2, 1),
                                 nn.GELU(), nn.Conv2d(width, width, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Encoders(nn.Module):
    """The frozen encoders: one for images and video frames, one for log-mel audio; attribute heads for pretraining."""

    def __init__(self, width: int):
        super().__init__()
        self.width = width
        self.visual = Encoder(3, width)
        self.audio = Encoder(1, width)
        self.heads = nn.ModuleDict({m: nn.ModuleList(nn.Linear(width * (FRAMES if m == "video" else 1), len(v))
                                                     for v in ATTRIBUTE_HEADS[m].values()) for m in MODALITIES})

    def grid(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        """Feature grid: image (B, C, 4, 4), video (B, F, C, 4, 4), audio (B, C, 4, w)."""
        if modality == "image":
            return self.visual(x)
        if modality == "video":
            b = x.shape[0]
            g = self.visual(x.flatten(0, 1))
            return g.view(b, -1, *g.shape[1:])
        return self.audio(x.unsqueeze(1))

    def attribute_logits(self, modality: str, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits of every pretraining attribute from the mean-pooled grid (per frame, concatenated, for video)."""
        g = self.grid(modality, x)
        pooled = g.mean(dim=(-2, -1)).flatten(1)
        return [head(pooled) for head in self.heads[modality]]


class Adapter(nn.Module):
    """Trainable per-modality LayerNorm, optional 2×2 stride-2 pooling, MLP projection into the LM."""

    def __init__(self, width: int, hidden: int, pooled: bool):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.pool = nn.Sequential(nn.Conv2d(width, width, 2, 2), nn.GELU()) if pooled else None
        self.proj = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, hidden))

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        """(B, [F,] C, h, w) grid -> (B, tokens, H)."""
        frames = grid.dim() == 5
        b = grid.shape[0]
        g = grid.flatten(0, 1) if frames else grid
        tok = self.norm(g.flatten(2).transpose(1, 2))  # (B', h*w, C)
        if self.pool is not None:
            h, w = g.shape[-2:]
            tok = self.pool(tok.transpose(1, 2).reshape(g.shape[0], -1, h, w)).flatten(2).transpose(1, 2)
        tok = self.proj(tok)
        return tok.reshape(b, -1, tok.shape[-1]) if frames else tok


@dataclass
class Example:
    """One training or evaluation sequence: an optional modality input, an instruction and a target."""

    modality: str | None
    grid: torch.Tensor | None  # frozen encoder features of the input
    instruction: str
    target: str = ""
    pseudo: tuple[str, str] | None = None  # a pseudo (question, answer) about the input (PTGM)


def lora_targets(model_type: str) -> list[str]:
    """Module names LoRA adapts for a causal LM of ``model_type`` (the attention query/value projections)."""
    return LORA_TARGETS.get(model_type, LORA_TARGETS["llama"])


def wrap_lora(lm: nn.Module, r: int, alpha: int, dropout: float) -> nn.Module:
    """The LM with LoRA on its attention projections (``peft``); every base weight frozen."""
    from peft import LoraConfig, get_peft_model

    mt = lm.config.model_type
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=lora_targets(mt),
                     fan_in_fan_out=mt == "gpt2", bias="none")
    return get_peft_model(lm, cfg)


def lora_layers(lm: nn.Module) -> dict[str, Any]:
    """Name -> every peft LoRA layer of the wrapped LM."""
    from peft.tuners.lora import LoraLayer

    return {n: m for n, m in lm.named_modules() if isinstance(m, LoraLayer)}


class MiclModel(nn.Module):
    """Frozen encoders + trainable adapters + causal LM with LoRA, with the tokenizer that feeds it."""

    def __init__(self, encoders: Encoders, lm: nn.Module, tokenizer: Any, lora: dict[str, Any]):
        super().__init__()
        self.encoders = encoders.eval().requires_grad_(False)
        hidden = lm.get_input_embeddings().weight.shape[1]
        self.adapters = nn.ModuleDict({m: Adapter(encoders.width, hidden, POOLED[m]) for m in MODALITIES})
        lm.requires_grad_(False)
        self.lm = wrap_lora(lm, int(lora["r"]), int(lora["alpha"]), float(lora["dropout"]))
        self.tok = tokenizer
        self.base_delta: dict[str, torch.Tensor] = {}  # merged earlier adapters, per LoRA layer (see merge_lora)
        self._id_cache: dict[str, list[int]] = {}

    # --- parameters -------------------------------------------------------------------------------------
    def trainable(self) -> dict[str, nn.Parameter]:
        """Name -> every trainable parameter (adapters and LoRA)."""
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Copies of the trainable parameters and the merged base deltas (what a checkpoint holds)."""
        state = {n: p.detach().clone() for n, p in self.trainable().items()}
        state.update({f"base_delta::{n}": d.clone() for n, d in self.base_delta.items()})
        return state

    def load_trainable_state(self, state: dict[str, torch.Tensor], where: str) -> None:
        """Restore :meth:`trainable_state`; DataError naming ``where`` on a name or shape mismatch."""
        params = self.trainable()
        deltas = {k.removeprefix("base_delta::"): v for k, v in state.items() if k.startswith("base_delta::")}
        plain = {k: v for k, v in state.items() if not k.startswith("base_delta::")}
        if set(plain) != set(params):
            raise DataError(f"{where}: checkpoint holds {len(plain)} trainable tensors, the model {len(params)}; "
                            f"differing names: {sorted(set(plain) ^ set(params))[:4]}")
        layers = lora_layers(self.lm)
        for n in deltas:
            if n not in layers:
                raise DataError(f"{where}: merged delta for unknown LoRA layer {n!r}")
        with torch.no_grad():
            for n, p in params.items():
                if p.shape != plain[n].shape:
                    raise DataError(f"{where}: tensor {n!r} has shape {tuple(plain[n].shape)}, expected {tuple(p.shape)}")
                p.copy_(plain[n])
            for n, d in deltas.items():
                self._apply_delta(layers[n], n, d - self.base_delta.get(n, torch.zeros_like(d)))
        self.base_delta = {n: d.clone() for n, d in deltas.items()}

    def _apply_delta(self, layer: Any, name: str, delta: torch.Tensor) -> None:
        layer.get_base_layer().weight.data += delta

    def merge_lora(self, generator: torch.Generator) -> None:
        """Fold every LoRA update ΔW = BA into the base weights and restart the adapters (A random, B = 0).

        The model's function is unchanged; afterwards a new adapter ``B'A'`` is the whole update of the
        current task, so scaling ``B'`` by α interpolates the *full* weights of the previous and the new model.
        """
        with torch.no_grad():
            for n, layer in lora_layers(self.lm).items():
                delta = layer.get_delta_weight("default")
                self._apply_delta(layer, n, delta)
                self.base_delta[n] = self.base_delta.get(n, torch.zeros_like(delta)) + delta
                a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
                a.copy_(torch.empty_like(a).uniform_(-1, 1, generator=generator) / math.sqrt(a.shape[1]))
                b.zero_()

    # --- sequences --------------------------------------------------------------------------------------
    def _ids(self, text: str) -> list[int]:
        """Token ids of ``text`` (memoised: prompts and cues repeat)."""
        if text not in self._id_cache:
            self._id_cache[text] = self.tok(text, add_special_tokens=False)["input_ids"] if text else []
        return self._id_cache[text]

    def _embed(self, ids: list[int], device: torch.device) -> torch.Tensor:
        return self.lm.get_input_embeddings()(torch.tensor(ids, dtype=torch.long, device=device))

    def prefixes(self, examples: list[Example], device: torch.device) -> list[torch.Tensor]:
        """(L_i, H) embeddings of ``cue + modality tokens + instruction`` per example (text only without a modality).

        Each modality's adapter runs once on the stacked inputs of that modality.
        """
        tokens: dict[int, torch.Tensor] = {}
        by_mod: dict[str, list[int]] = {}
        for i, ex in enumerate(examples):
            if ex.modality is not None:
                by_mod.setdefault(ex.modality, []).append(i)
        for mod, idx in by_mod.items():
            out = self.adapters[mod](torch.stack([examples[i].grid for i in idx]).to(device))
            tokens.update(zip(idx, out))
        rows = []
        for i, ex in enumerate(examples):
            if ex.modality is None:
                rows.append(self._embed(self._ids(ex.instruction), device))
            else:
                cue_ids, ins_ids = self._ids(cue(ex.modality)), self._ids(ex.instruction)
                emb = self._embed(cue_ids + ins_ids, device)
                rows.append(torch.cat([emb[: len(cue_ids)], tokens[i], emb[len(cue_ids):]]))
        return rows

    def batch(self, examples: list[Example], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-padded ``inputs_embeds``, attention mask and labels (-100 off the target + eos)."""
        rows, labels = [], []
        eos = self.tok.eos_token_id
        for ex, pre in zip(examples, self.prefixes(examples, device)):
            tgt = [*self._ids(ex.target), eos] if ex.target else []
            rows.append(torch.cat([pre, self._embed(tgt, device)]) if tgt else pre)
            labels.append([-100] * len(pre) + tgt)
        L = max(len(r) for r in rows)
        H = rows[0].shape[1]
        emb = torch.zeros(len(rows), L, H, device=device)
        mask = torch.zeros(len(rows), L, dtype=torch.long, device=device)
        lab = torch.full((len(rows), L), -100, dtype=torch.long, device=device)
        for i, (r, lb) in enumerate(zip(rows, labels)):
            emb[i, : len(r)] = r
            mask[i, : len(r)] = 1
            lab[i, : len(lb)] = torch.tensor(lb, device=device)
        return emb, mask, lab

    def forward_batch(self, examples: list[Example], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits, attention mask, labels) of a batch of examples."""
        emb, mask, lab = self.batch(examples, device)
        return self.lm(inputs_embeds=emb, attention_mask=mask).logits, mask, lab

    @staticmethod
    def target_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Next-token cross-entropy over the target positions."""
        return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)

    @torch.no_grad()
    def generate(self, examples: list[Example], device: torch.device, gen: dict[str, Any]) -> list[str]:
        """Beam-search continuations of each example's prefix (left-padded batch), decoded up to eos."""
        pres = self.prefixes(examples, device)
        L, H = max(len(p) for p in pres), pres[0].shape[1]
        emb = torch.zeros(len(pres), L, H, device=device)
        mask = torch.zeros(len(pres), L, dtype=torch.long, device=device)
        for i, p in enumerate(pres):
            emb[i, L - len(p):] = p
            mask[i, L - len(p):] = 1
        out = self.lm.generate(inputs_embeds=emb, attention_mask=mask, num_beams=int(gen["num_beams"]),
                               max_new_tokens=int(gen["max_new_tokens"]), repetition_penalty=float(gen["repetition_penalty"]),
                               do_sample=False, pad_token_id=self.tok.pad_token_id, eos_token_id=self.tok.eos_token_id)
        return [self.tok.decode(row, skip_special_tokens=True).strip() for row in out]


def save_lm(lm: nn.Module, tokenizer: Any, out: Path) -> None:
    """Write the LM and its tokenizer with ``save_pretrained`` (loadable by the Auto classes)."""
    lm.save_pretrained(out / "lm", safe_serialization=True)
    tokenizer.save_pretrained(out / "lm")


def load_lm(path: Path) -> tuple[nn.Module, Any]:
    """Any local ``save_pretrained`` directory of an ``AutoModelForCausalLM`` and its tokenizer.

    A single ``model.safetensors`` is read straight into a model built from the config (skips
    ``from_pretrained``'s weight-conversion set-up, most of a small stage's load time); tied output
    embeddings may be absent from it, any other missing or unexpected tensor is an error. Other
    layouts (sharded, ``.bin``) go through ``from_pretrained``.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if not (path / "config.json").is_file():
        raise DataError(f"{path}: no config.json; expected a save_pretrained directory of a causal LM")
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    single = path / "model.safetensors"
    if single.is_file():
        from safetensors.torch import load_file

        lm = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path, local_files_only=True))
        missing, unexpected = lm.load_state_dict(load_file(single), strict=False)
        lm.tie_weights()
        out = lm.get_output_embeddings()
        tied = {n for n, p in lm.named_parameters(remove_duplicate=False)
                if out is not None and p is out.weight and p is lm.get_input_embeddings().weight}
        if unexpected or set(missing) - tied:
            raise DataError(f"{single}: does not match {path / 'config.json'}: missing {sorted(set(missing) - tied)[:4]}, "
                            f"unexpected {sorted(unexpected)[:4]}")
    else:
        lm = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return lm.eval(), tok


def load_encoders(path: Path) -> Encoders:
    """The frozen encoders saved by the pretrain stage (``encoders.pt``: width + state dict)."""
    f = path / "encoders.pt"
    if not f.is_file():
        raise DataError(f"{f}: missing; run the micl pretrain stage first")
    blob = torch.load(f, map_location="cpu", weights_only=True)
    enc = Encoders(int(blob["width"]))
    enc.load_state_dict(blob["state"])
    return enc.eval()


def build_model(pretrained: Path, lora: dict[str, Any]) -> MiclModel:
    """The micl model from a pretrain stage's directory (``encoders.pt`` + ``lm/``)."""
    lm, tok = load_lm(pretrained / "lm")
    return MiclModel(load_encoders(pretrained), lm, tok, lora)


def build_tokenizer(words: list[str]) -> Any:
    """A word-level fast tokenizer over a closed vocabulary (``<pad>``, ``<eos>``, ``<unk>`` first)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<eos>", "<unk>", *words])}
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=t, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>",
                                   bos_token="<eos>")


CKPT = "ckpt.pt"  # a run step's checkpoint file: trainable tensors and the method's state


def load_samples(data: Path, model: MiclModel, tasks: list[str], split: str) -> dict[str, list[dict[str, Any]]]:
    """Task -> samples of ``split``, each with its frozen encoder features ``grid``."""
    for f in (data / "samples.json", data / "inputs.pt"):
        if not f.is_file():
            raise DataError(f"{f}: missing; run the micl prepare stage first")
    meta = json.loads((data / "samples.json").read_text())
    inputs = torch.load(data / "inputs.pt", weights_only=True)
    out = {}
    with torch.no_grad():
        for t in tasks:
            samples, x = meta[t][split], inputs[t][split]
            if len(samples) != len(x):
                raise DataError(f"{data}: task {t} split {split}: {len(samples)} samples but {len(x)} inputs")
            if samples:
                grids = model.encoders.grid(samples[0]["modality"], encoder_input(samples[0]["modality"], x))
                for s, g in zip(samples, grids):
                    s["grid"] = g
            out[t] = samples
    return out


def load_checkpoint(path: Path, model: MiclModel) -> dict[str, Any]:
    """Restore a train stage's checkpoint into ``model``; the method state it holds."""
    f = path / CKPT
    if not f.is_file():
        raise DataError(f"{f}: missing; run the previous train stage first")
    blob = torch.load(f, map_location="cpu", weights_only=True)
    model.load_trainable_state(blob["trainable"], str(f))
    return blob["extra"]
