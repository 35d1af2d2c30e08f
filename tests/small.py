"""The shrunken params.yaml that the end-to-end tests run on (one place for what they share)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from cmml.families.registry import FAMILIES

ROOT = Path(__file__).resolve().parents[1]


def keep_families(params: dict[str, Any], families: Sequence[str] = ("cmml",)) -> dict[str, Any]:
    """``params`` without the sections of the registered families not in ``families`` (modified in place)."""
    for fam in FAMILIES:
        if fam not in families:
            params.pop(fam, None)
    return params


def small_params(num_classes: int, per_class: dict[str, int], runs: dict[str, dict[str, Any]] | None = None,
                 seeds: Sequence[int] = (0,), families: Sequence[str] = ("cmml",)) -> dict[str, Any]:
    """The repository's params.yaml with a tiny embedded benchmark, 2 tasks, one pretraining epoch, CPU
    with one thread and the ``both70`` setting only; with ``runs`` ({run name: overrides of its
    block}), experiment ``main`` trains just those runs on ``both70`` for ``seeds``. Only the
    sections of ``families`` are kept."""
    p = keep_families(yaml.safe_load((ROOT / "params.yaml").read_text()), families)
    p["benchmark"].update(num_classes=num_classes, per_class=per_class)
    p["tasks"]["num_tasks"] = 2
    p["pretrain"]["epochs"] = 1
    p["runtime"].update(device="cpu", threads=1)
    p["settings"] = {"both70": p["settings"]["both70"]}
    if runs is not None:
        p["cmml"]["methods"] = {run: {**p["cmml"]["methods"][run], **over} for run, over in runs.items()}
        p["cmml"]["experiments"] = {"main": {"methods": list(runs), "settings": ["both70"], "seeds": list(seeds)}}
    return p
