"""Method registry: name -> module (imported lazily, so validating params never imports torch).

Adding a method = one file defining ``METHOD`` (a :class:`cmml.methods.base.Method` subclass),
one line here, its params block in params.yaml and its test. Stage handlers never import this
file (the plan passes them the method's module), so adding a line reruns no other method's stages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from cmml.errors import ConfigError

if TYPE_CHECKING:
    from cmml.methods.base import Method


@dataclass(frozen=True)
class Entry:
    """Where a method lives and whether it trains all tasks jointly (one train stage)."""

    module: str
    joint: bool = False


METHODS: dict[str, Entry] = {
    "finetune": Entry("cmml.methods.finetune"),
    "joint": Entry("cmml.methods.joint", joint=True),
    "rebq": Entry("cmml.methods.rebq"),
    "coda_prompt": Entry("cmml.methods.coda_prompt"),
    "l2p": Entry("cmml.methods.l2p"),
    "dualprompt": Entry("cmml.methods.dualprompt"),
    "map_prompt": Entry("cmml.methods.map_prompt"),
    "ewc": Entry("cmml.methods.ewc"),
    "lwf": Entry("cmml.methods.lwf"),
    "er": Entry("cmml.methods.er"),
    "ssf": Entry("cmml.methods.ssf"),
}


def entry(name: str) -> Entry:
    """The registry entry of method ``name``; ConfigError listing the known ones otherwise."""
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; known: {sorted(METHODS)}")
    return METHODS[name]


def get_method(name: str) -> type[Method]:
    """The Method class registered under ``name``."""
    from cmml.methods.base import load_method

    return load_method(entry(name).module)
