"""Loading and validating params.yaml: the one configuration every stage and both workflow tools read.

A leaf module (imports nothing of cmml but the errors). It validates the sections every family
shares (benchmark, tasks, backbone, pretrain, missing, data, settings, runtime, report); each
experiment family validates its own section (``cmml.families``), and method hyper-parameters are
checked against the method's schema when a method is built and by ``cmml check``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from cmml.errors import ConfigError

DEFAULT_PARAMS = "params.yaml"
MISSING_TYPES = ("text", "image", "both")
FILL_POLICIES = ("map", "zeros")
PRETRAIN_WEIGHTS = ("itm_weight", "mlm_weight", "cls_weight")  # what a missing input becomes (cmml.data.dataset)


def load_params(path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    """Read and validate a params file; raise ConfigError naming the file and key on any problem."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: params file not found")
    try:
        params = yaml.load(p.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # libyaml: ~10x faster
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
    _typed(params, "benchmark.name", str, where)  # the benchmark registry checks the name and its own keys
    _typed(params, "benchmark.seed", int, where)
    ncls = _positive(params, "benchmark.num_classes", where)
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
    for k in ("lr", "weight_decay", *PRETRAIN_WEIGHTS):
        if _typed(params, f"pretrain.{k}", (int, float), where) < 0:
            raise ConfigError(f"{where}: key 'pretrain.{k}' must be >= 0, got {params['pretrain'][k]}")
    if not any(params["pretrain"][k] > 0 for k in PRETRAIN_WEIGHTS):
        raise ConfigError(f"{where}: keys {['pretrain.' + k for k in PRETRAIN_WEIGHTS]}: at least one objective needs a positive weight")
    if _ratio(params, "pretrain.mask_prob", where) == 0 and params["pretrain"]["mlm_weight"] > 0:
        raise ConfigError(f"{where}: key 'pretrain.mask_prob' must be positive when pretrain.mlm_weight is")
    _typed(params, "missing.map_compat", bool, where)
    _choice(params, "data.fill", FILL_POLICIES, where)

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
    _positive(params, "runtime.num_workers", where, zero_ok=True)
    _positive(params, "runtime.cache_mb", where, zero_ok=True)
    _positive(params, "runtime.nproc_per_stage", where)

    _typed(params, "report.title", str, where)
    if ntask > ncls:
        raise ConfigError(f"{where}: key 'tasks.num_tasks' ({ntask}) exceeds benchmark.num_classes ({ncls})")


def block_chain(blocks: dict[str, Any], name: str, prefix: str, where: str = DEFAULT_PARAMS) -> list[str]:
    """Names from ``name`` up its ``base:`` chain in ``blocks`` (the mapping at key ``prefix``)."""
    chain = [name]
    while True:
        if chain[-1] not in blocks:
            raise ConfigError(f"{where}: missing key '{prefix}.{chain[-1]}'")
        block = blocks[chain[-1]]
        if not isinstance(block, dict):
            raise ConfigError(f"{where}: key '{prefix}.{chain[-1]}' must be a mapping")
        base = block.get("base")
        if base is None:
            return chain
        if not isinstance(base, str) or base not in blocks:
            raise ConfigError(f"{where}: key '{prefix}.{chain[-1]}.base' must name another entry of '{prefix}', got {base!r}")
        if base in chain:
            raise ConfigError(f"{where}: key '{prefix}.{name}.base' forms a cycle: {chain + [base]}")
        chain.append(base)


def merged_block(blocks: dict[str, Any], name: str, prefix: str, where: str = DEFAULT_PARAMS) -> dict[str, Any]:
    """The merged entries of ``name`` (base first, then overrides), without ``base``."""
    merged: dict[str, Any] = {}
    for n in reversed(block_chain(blocks, name, prefix, where)):
        merged.update({k: v for k, v in blocks[n].items() if k != "base"})
    return merged


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
