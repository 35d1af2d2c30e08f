"""Stage handler ``micl/pretrain/seed<k>``: the frozen encoders (attribute prediction) and the LM (causal LM on text).

Neither objective sees a task's captions or answers: the encoders learn the generating attributes of
their own pretraining items, the LM learns the text of other items and the instruction corpus. With
``micl.lm.source: pretrained`` the LM is any local ``AutoModelForCausalLM`` directory
(``micl.lm.path``) and is copied unchanged; its own tokenizer then reads the texts.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from cmml.families.micl.data import MODALITIES
from cmml.families.micl.model import Encoders, load_lm, save_lm
from cmml.provenance.sidecar import stage_run
from cmml.train.device import seed_everything, select_device


def train_encoders(blob: dict[str, Any], cfg: dict[str, Any], gen: torch.Generator) -> tuple[Encoders, dict[str, float]]:
    """Encoders trained on attribute prediction (80 % of the items; held-out accuracy per modality returned)."""
    enc = Encoders(int(cfg["width"]))
    opt = torch.optim.AdamW(enc.parameters(), lr=float(cfg["lr"]), weight_decay=0.01)
    bs = int(cfg["batch_size"])
    splits = {m: int(0.8 * len(blob[m]["y"])) for m in MODALITIES}
    for _ in range(int(cfg["epochs"])):
        for m in MODALITIES:
            x, y, n = blob[m]["x"], blob[m]["y"], splits[m]
            for idx in torch.randperm(n, generator=gen).split(bs):
                loss = sum(F.cross_entropy(lo, y[idx, k]) for k, lo in enumerate(enc.attribute_logits(m, x[idx])))
                opt.zero_grad()
                loss.backward()
                opt.step()
    acc = {}
    with torch.no_grad():
        for m in MODALITIES:
            x, y, n = blob[m]["x"], blob[m]["y"], splits[m]
            logits = enc.attribute_logits(m, x[n:])
            acc[m] = round(float(torch.stack([(lo.argmax(1) == y[n:, k]).float().mean() for k, lo in enumerate(logits)]).mean()), 4)
    return enc.eval(), acc


def train_lm(texts: list[str], tok: Any, cfg: dict[str, Any], gen: torch.Generator) -> tuple[Any, list[float]]:
    """A tiny GPT-2-style causal LM trained on ``texts`` (each followed by eos); mean loss per epoch."""
    from transformers import GPT2Config, GPT2LMHeadModel

    conf = GPT2Config(vocab_size=len(tok), n_positions=int(cfg["positions"]), n_embd=int(cfg["hidden"]),
                      n_layer=int(cfg["layers"]), n_head=int(cfg["heads"]), bos_token_id=tok.eos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    lm = GPT2LMHeadModel(conf)
    opt = torch.optim.AdamW(lm.parameters(), lr=float(cfg["lr"]), weight_decay=0.01)
    ids = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in texts]
    losses = []
    for _ in range(int(cfg["epochs"])):
        total, steps = 0.0, 0
        for idx in torch.randperm(len(ids), generator=gen).split(int(cfg["batch_size"])):
            rows = [ids[int(i)] for i in idx]
            L = max(map(len, rows))
            x = torch.full((len(rows), L), tok.pad_token_id)
            mask = torch.zeros(len(rows), L, dtype=torch.long)
            for k, r in enumerate(rows):
                x[k, : len(r)] = torch.tensor(r)
                mask[k, : len(r)] = 1
            loss = lm(input_ids=x, attention_mask=mask, labels=x.masked_fill(mask == 0, -100)).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, steps = total + loss.item(), steps + 1
        losses.append(round(total / max(steps, 1), 4))
    return lm.eval(), losses


def run(stage: Any, params: dict[str, Any]) -> None:
    """Pretrain (or import) the seed's encoders and LM."""
    from transformers import AutoTokenizer

    a, cfg = stage.args, params["micl"]
    seed = int(a["seed"])
    device = select_device(params["runtime"])
    seed_everything(seed)
    gen = torch.Generator().manual_seed(seed)
    data = Path(a["data"])
    enc, acc = train_encoders(torch.load(data / "encoders.pt", weights_only=True), cfg["encoders"], gen)
    if cfg["lm"]["source"] == "tiny":
        tok = AutoTokenizer.from_pretrained(data / "tokenizer", local_files_only=True)
        corpus = json.loads((data / "corpus.json").read_text())
        lm, losses = train_lm(corpus["lm"], tok, cfg["lm"], gen)
    else:
        lm, tok = load_lm(Path(cfg["lm"]["path"]))
        losses = []
    extra = {"encoder_heldout_accuracy": acc, "lm_loss_per_epoch": losses, "lm_parameters": sum(p.numel() for p in lm.parameters())}
    with stage_run(stage, params, seed=seed, device=device.describe(), extra=extra) as sr:
        out = sr.tmp(a["out"])
        torch.save({"width": enc.width, "state": enc.state_dict()}, out / "encoders.pt")
        if cfg["lm"]["source"] == "tiny":
            save_lm(lm, tok, out)
        else:
            shutil.copytree(Path(cfg["lm"]["path"]), out / "lm")
