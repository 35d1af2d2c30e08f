"""micl method registry: name -> module holding a ``Method`` class (a :class:`..base.MiclMethod`)."""

from __future__ import annotations

import importlib
from typing import Any

METHODS: dict[str, str] = {
    "finetune": "cmml.families.micl.methods.finetune",
    "joint": "cmml.families.micl.methods.joint",
    "moincl": "cmml.families.micl.methods.moincl",
    "lwf": "cmml.families.micl.methods.lwf",
    "replay": "cmml.families.micl.methods.replay",
    "ewc": "cmml.families.micl.methods.ewc",
}


def method_class(name: str) -> Any:
    """The ``Method`` class of a registered micl method."""
    return importlib.import_module(METHODS[name]).Method
