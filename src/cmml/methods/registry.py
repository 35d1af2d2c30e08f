"""Method registry: name -> module (imported lazily so validating params never imports torch).

Adding a method = one file defining ``METHOD`` (a :class:`cmml.methods.base.Method` subclass),
one line here, its params block in params.yaml and its test.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cmml.config import method_block
from cmml.errors import ConfigError

if TYPE_CHECKING:
    from cmml.methods.base import Method


@dataclass(frozen=True)
class Entry:
    """Where a method lives, the extra source files it runs, and whether it trains all tasks jointly."""

    module: str
    uses: tuple[str, ...] = ()
    joint: bool = False


METHODS: dict[str, Entry] = {
    "finetune": Entry("cmml.methods.finetune"),
    "joint": Entry("cmml.methods.joint", uses=("methods/finetune.py",), joint=True),
    "rebq": Entry("cmml.methods.rebq", uses=("methods/prompt_pool.py",)),
}


def _entry(name: str) -> Entry:
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; known: {sorted(METHODS)}")
    return METHODS[name]


def method_files(name: str) -> list[str]:
    """Source files (relative to src/cmml) a method's stages run, for the plan's deps."""
    e = _entry(name)
    own = e.module.removeprefix("cmml.").replace(".", "/") + ".py"
    return [own, *e.uses]


def is_joint_method(name: str) -> bool:
    """Whether the method trains on the union of all tasks in one stage."""
    return _entry(name).joint


def get_method(name: str) -> type[Method]:
    """The Method class registered under ``name``."""
    return importlib.import_module(_entry(name).module).METHOD


def resolve_hparams(params: dict[str, Any], run: str, where: str = "params.yaml") -> dict[str, Any]:
    """The run's merged params block checked against the method's HPARAMS schema (exact key set, types)."""
    block = method_block(params, run, where)
    cls = get_method(block["method"])
    schema = {**cls.COMMON_HPARAMS, **cls.HPARAMS}
    hp = {k: v for k, v in block.items() if k != "method"}
    for key in sorted(set(schema) - set(hp)):
        raise ConfigError(f"{where}: key 'methods.{run}.{key}' is missing ({block['method']} needs {sorted(schema)})")
    for key in sorted(set(hp) - set(schema)):
        raise ConfigError(f"{where}: key 'methods.{run}.{key}' is not a {block['method']} hyper-parameter (expected {sorted(schema)})")
    for key, typ in schema.items():
        val = hp[key]
        types = typ if isinstance(typ, tuple) else (typ,)
        if isinstance(val, bool) and bool not in types or not isinstance(val, types):
            if float in types and isinstance(val, int) and not isinstance(val, bool):
                hp[key] = float(val)
                continue
            names = "/".join(t.__name__ for t in types)
            raise ConfigError(f"{where}: key 'methods.{run}.{key}' must be {names}, got {val!r}")
    cls.check_hparams(hp, f"{where}: methods.{run}")
    return hp
