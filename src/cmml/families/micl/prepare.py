"""Stage handler ``micl/prepare``: the embedded generative data of the micl family.

Writes ``inputs.pt`` (task -> split -> the stacked input tensors), ``samples.json`` (task -> split ->
samples: captions, question, answers, pseudo QA, attributes), ``encoders.pt`` (attribute-labelled items for encoder pretraining, their own
split), ``corpus.json`` (LM pretraining text and the text-only instruction corpus) and ``tokenizer/``
(a word-level tokenizer over the closed vocabulary). Every text is checked against the vocabulary.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from cmml.errors import DataError
from cmml.families.micl.data import generate_task, instruction_corpus, lm_corpus, pretrain_items, vocabulary
from cmml.families.micl.tasks import MODALITIES, TASKS
from cmml.provenance.sidecar import stage_run


def texts_of(sample: dict[str, Any]) -> list[str]:
    """Every text of a sample."""
    return [*sample["captions"], sample["caption_prompt"], sample["question"], *sample["answers"],
            sample["pseudo_question"], sample["pseudo_answer"]]


def build(cfg: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, list[str]]]:
    """(samples, encoder pretraining items, corpus) for the ``micl.data`` block."""
    seed = int(cfg["seed"])
    samples = {t: {"train": generate_task(seed, t, "train", int(cfg["train"])),
                   "test": generate_task(seed, t, "test", int(cfg["test"]))} for t in TASKS}
    enc = {m: dict(zip(("x", "y"), pretrain_items(seed, m, int(cfg["pretrain_items"])))) for m in MODALITIES}
    corpus = {"lm": lm_corpus(seed, int(cfg["lm_captions"]), int(cfg["instructions"])),
              "instructions": instruction_corpus(seed, int(cfg["instructions"]))}
    vocab = set(vocabulary())
    for text in [*corpus["lm"], *corpus["instructions"], *(x for t in samples.values() for s in t.values() for smp in s
                                                            for x in texts_of(smp))]:
        unknown = [w for w in text.split() if w not in vocab]
        if unknown:
            raise DataError(f"micl data generator produced words outside the vocabulary: {unknown} in {text!r}")
    return samples, enc, corpus


def run(stage: Any, params: dict[str, Any]) -> None:
    """Generate and write the family's data."""
    from cmml.families.micl.model import build_tokenizer

    a = stage.args
    samples, enc, corpus = build(params["micl"]["data"])
    counts = {t: {k: len(v) for k, v in s.items()} for t, s in samples.items()}
    with stage_run(stage, params, seed=int(params["micl"]["data"]["seed"]), extra={"samples": counts}) as sr:
        out = sr.tmp(a["out"])
        torch.save({t: {k: torch.stack([x["x"] for x in v]) for k, v in s.items()} for t, s in samples.items()},
                   out / "inputs.pt")
        meta = {t: {k: [{f: val for f, val in x.items() if f != "x"} for x in v] for k, v in s.items()} for t, s in samples.items()}
        (out / "samples.json").write_text(json.dumps(meta) + "\n")
        torch.save(enc, out / "encoders.pt")
        (out / "corpus.json").write_text(json.dumps(corpus, indent=1) + "\n")
        build_tokenizer(vocabulary()).save_pretrained(out / "tokenizer")
