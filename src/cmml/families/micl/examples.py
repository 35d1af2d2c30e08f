"""Samples (dicts from the prepare stage) -> model :class:`~cmml.families.micl.model.Example` s."""

from __future__ import annotations

from typing import Any

import torch

from cmml.families.micl.model import Example


def to_example(s: dict[str, Any], generator: torch.Generator | None) -> Example:
    """A training example: a random caption paraphrase / answer as target (the first one without a generator)."""
    targets = s["captions"] if s["kind"] == "cap" else s["answers"]
    k = int(torch.randint(len(targets), (1,), generator=generator)) if generator is not None else 0
    prompt = s["caption_prompt"] if s["kind"] == "cap" else s["question"]
    return Example(s["modality"], s["grid"], prompt, targets[k], (s["pseudo_question"], s["pseudo_answer"]))


def prompt_example(s: dict[str, Any]) -> Example:
    """An evaluation example: the sample's prompt, no target."""
    return Example(s["modality"], s["grid"], s["caption_prompt"] if s["kind"] == "cap" else s["question"])
