"""Loading and validating params.yaml: the one configuration every stage and both workflow tools read.

Validation is structural and cheap (no torch import) so light stages start fast; method
hyper-parameters are checked against the method's declared schema when the method is built
(``cmml.methods.registry.resolve_hparams``) and by ``cmml check``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cmml.errors import ConfigError

DEFAULT_PARAMS = "params.yaml"
MISSING_TYPES = ("text", "image", "both")
BENCHMARKS = ("embedded", "mmimdb", "food101", "hatememes")


def load_params(path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    """Read and validate a params file; raise ConfigError naming the file and key on any problem."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: params file not found")
    try:
        params = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    if not isinstance(params, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level, got {type(params).__name__}")
    validate(params, str(p))
    return params


def get(params: dict[str, Any], dotted: str, where: str = DEFAULT_PARAMS) -> Any:
    """Value at ``a.b.c``; ConfigError naming the key when absent."""
    cur: Any = params
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            raise ConfigError(f"{where}: missing key '{dotted}'")
        cur = cur[part]
    return cur


def _typed(params: dict[str, Any], key: str, types: type | tuple[type, ...], where: str) -> Any:
    val = get(params, key, where)
    ok = isinstance(val, types) and not (isinstance(val, bool) and bool not in _tuple(types))
    if not ok:
        names = "/".join(t.__name__ for t in _tuple(types))
        raise ConfigError(f"{where}: key '{key}' must be {names}, got {val!r} ({type(val).__name__})")
    return val


def _tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def _choice(params: dict[str, Any], key: str, choices: tuple[str, ...], where: str) -> str:
    val = _typed(params, key, str, where)
    if val not in choices:
        raise ConfigError(f"{where}: key '{key}' must be one of {list(choices)}, got {val!r}")
    return val


def _positive(params: dict[str, Any], key: str, where: str, zero_ok: bool = False) -> int:
    val = _typed(params, key, int, where)
    if val < 0 or (val == 0 and not zero_ok):
        raise ConfigError(f"{where}: key '{key}' must be a {'non-negative' if zero_ok else 'positive'} integer, got {val}")
    return val


def _ratio(params: dict[str, Any], key: str, where: str) -> float:
    val = float(_typed(params, key, (int, float), where))
    if not 0.0 <= val <= 1.0:
        raise ConfigError(f"{where}: key '{key}' must be a ratio in [0, 1], got {val}")
    return val


def validate(params: dict[str, Any], where: str = DEFAULT_PARAMS) -> None:
    """Check every key the pipeline reads: presence, type, range, cross references."""
    from cmml.methods.registry import METHODS

    _choice(params, "benchmark.name", BENCHMARKS, where)
    _choice(params, "benchmark.variant", ("single", "multi"), where)
    _typed(params, "benchmark.seed", int, where)
    ncls = _positive(params, "benchmark.num_classes", where)
    if params["benchmark"]["name"] == "embedded" and ncls % 4:
        raise ConfigError(f"{where}: key 'benchmark.num_classes' must be a multiple of 4 for the embedded benchmark, got {ncls}")
    for split in ("pretrain", "train", "val", "test"):
        _positive(params, f"benchmark.per_class.{split}", where)
    _positive(params, "benchmark.image_size", where)
    _positive(params, "benchmark.max_text_len", where)

    ntask = _positive(params, "tasks.num_tasks", where)
    _typed(params, "tasks.order_seed", int, where)
    _choice(params, "tasks.scenario", ("class", "task"), where)

    _choice(params, "backbone.source", ("tiny", "pretrained"), where)
    _typed(params, "backbone.pretrained", str, where)
    for k in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "patch_size"):
        _positive(params, f"backbone.tiny.{k}", where)
    if params["backbone"]["tiny"]["hidden_size"] % params["backbone"]["tiny"]["num_heads"]:
        raise ConfigError(f"{where}: key 'backbone.tiny.hidden_size' must be divisible by backbone.tiny.num_heads")

    for k in ("epochs", "batch_size"):
        _positive(params, f"pretrain.{k}", where)
    for k in ("lr", "weight_decay", "itm_weight"):
        _typed(params, f"pretrain.{k}", (int, float), where)
    _typed(params, "pretrain.seed", int, where)
    _typed(params, "missing.map_compat", bool, where)

    settings = _typed(params, "settings", dict, where)
    if not settings:
        raise ConfigError(f"{where}: key 'settings' must define at least one missing-modality setting")
    for name in settings:
        for split in ("train", "test"):
            _choice(params, f"settings.{name}.{split}.type", MISSING_TYPES, where)
            _ratio(params, f"settings.{name}.{split}.ratio", where)
        _ratio(params, f"settings.{name}.both_ratio", where)

    _choice(params, "runtime.device", ("auto", "cpu", "cuda"), where)
    _positive(params, "runtime.threads", where, zero_ok=True)
    _positive(params, "runtime.eval_batch_size", where)

    methods = _typed(params, "methods", dict, where)
    for run in methods:
        method_block(params, run, where)
        mname = method_name(params, run, where)
        if mname not in METHODS:
            raise ConfigError(f"{where}: key 'methods.{run}.method' names unknown method {mname!r}; known: {sorted(METHODS)}")

    exps = _typed(params, "experiments", dict, where)
    if not exps:
        raise ConfigError(f"{where}: key 'experiments' must list at least one experiment")
    for exp in exps:
        for k, pool in (("methods", methods), ("settings", settings)):
            vals = _typed(params, f"experiments.{exp}.{k}", list, where)
            for v in vals:
                if v not in pool:
                    raise ConfigError(f"{where}: key 'experiments.{exp}.{k}' names {v!r}, which is not defined under '{k}'")
        for s in _typed(params, f"experiments.{exp}.seeds", list, where):
            if not isinstance(s, int) or isinstance(s, bool) or s < 0:
                raise ConfigError(f"{where}: key 'experiments.{exp}.seeds' must hold non-negative integers, got {s!r}")
    _typed(params, "report.title", str, where)
    if ntask > ncls:
        raise ConfigError(f"{where}: key 'tasks.num_tasks' ({ntask}) exceeds benchmark.num_classes ({ncls})")


def method_chain(params: dict[str, Any], run: str, where: str = DEFAULT_PARAMS) -> list[str]:
    """Run names from ``run`` up its ``base:`` chain (``[run, base, base-of-base, ...]``)."""
    chain = [run]
    while True:
        block = get(params, f"methods.{chain[-1]}", where)
        if not isinstance(block, dict):
            raise ConfigError(f"{where}: key 'methods.{chain[-1]}' must be a mapping")
        base = block.get("base")
        if base is None:
            return chain
        if not isinstance(base, str) or base not in params["methods"]:
            raise ConfigError(f"{where}: key 'methods.{chain[-1]}.base' must name another entry of 'methods', got {base!r}")
        if base in chain:
            raise ConfigError(f"{where}: key 'methods.{run}.base' forms a cycle: {chain + [base]}")
        chain.append(base)


def method_block(params: dict[str, Any], run: str, where: str = DEFAULT_PARAMS) -> dict[str, Any]:
    """The merged hyper-parameters of a method run (base first, then overrides), without ``base``."""
    merged: dict[str, Any] = {}
    for name in reversed(method_chain(params, run, where)):
        merged.update({k: v for k, v in params["methods"][name].items() if k != "base"})
    return merged


def method_name(params: dict[str, Any], run: str, where: str = DEFAULT_PARAMS) -> str:
    """Registry name of the method behind a run."""
    name = method_block(params, run, where).get("method")
    if not isinstance(name, str):
        raise ConfigError(f"{where}: key 'methods.{run}.method' must name a registered method")
    return name


@dataclass(frozen=True)
class Run:
    """One continual run: a method run name under a missing setting with a seed."""

    method: str
    setting: str
    seed: int


def runs(params: dict[str, Any]) -> list[Run]:
    """Every (method run, setting, seed) of every experiment, deduplicated, in a stable order."""
    seen: dict[Run, None] = {}
    for exp in params["experiments"].values():
        for m in exp["methods"]:
            for s in exp["settings"]:
                for seed in exp["seeds"]:
                    seen[Run(m, s, seed)] = None
    return list(seen)


def subset(params: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """The values of dotted ``keys`` as a flat mapping (what a stage depends on)."""
    return {k: get(params, k) for k in keys}


def params_hash(values: dict[str, Any]) -> str:
    """Stable short hash of a params subset (sorted-key JSON)."""
    blob = json.dumps(values, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def benchmark_id(params: dict[str, Any]) -> str:
    """Directory name of the benchmark (embedded has a single- and a multi-label variant)."""
    name = params["benchmark"]["name"]
    return f"{name}-multi" if name == "embedded" and params["benchmark"]["variant"] == "multi" else name
