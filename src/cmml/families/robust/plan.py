"""The robust family's params section and stages (Reza et al.'s adaptation per modality combination).

Section ``robust`` (docs/robust.md): ``seeds``, ``fills`` (missing-input conventions compared),
``settings`` (missing tables whose test split is scored as a mixed batch), ``missing_rates`` (the
sweep), ``train_per_class`` / ``test_per_class`` (the first n samples of each class, null for all)
and ``models`` (name -> ``kind`` plus its hyper-parameters). Kinds: ``complete`` (trained on
complete data, head only or head + backbone; evaluated as it is, it is the "no adaptation" row),
``ssf`` / ``lora`` / ``bitfit`` (one adapter set per combination on the frozen model named by
``start``), ``dedicated`` (one model per combination, trained on that combination only) and
``dropout`` (one model trained with modality dropout).

Granularity: per seed one train stage per model, which trains every combination's parameters
(adapter sets, dedicated models) under every fill (a complete-data model sees no missing input,
so it is trained once and serves every fill), and one evaluate stage per seed that scores every
model under every fill on every test combination, listed setting and missing rate; then one
report stage over everything. Every stage pays ~1-2 s of process, backbone and data loading, so
per-combination, per-fill or per-model stages would multiply that cost for no gain.
"""

from __future__ import annotations

from typing import Any

from cmml.config import FILL_POLICIES, benchmark_id
from cmml.errors import ConfigError
from cmml.pipeline.stage import Stage, dir_sidecar

SECTION = "robust"
RESULTS = f"results/{SECTION}"
METRICS_JSON = f"{RESULTS}/metrics.json"
REPORT_DIR = f"{RESULTS}/report"
MODEL_RUNTIME = ["runtime.device", "runtime.threads"]
ADAPTER_KINDS = ("ssf", "lora", "bitfit")
KINDS = ("complete", *ADAPTER_KINDS, "dedicated", "dropout")
COMMON: dict[str, type | tuple[type, ...]] = {"epochs": int, "batch_size": int, "lr": float, "weight_decay": float,
                                              "warmup": float}
SCHEMA: dict[str, dict[str, type | tuple[type, ...]]] = {
    "complete": {"train_backbone": bool},
    "ssf": {"start": str, "init": str, "init_std": float},
    "lora": {"start": str, "rank": int, "alpha": float, "targets": list},
    "bitfit": {"start": str},
    "dedicated": {"train_backbone": bool},
    "dropout": {"train_backbone": bool, "p": float},
}
SSF_INITS = ("identity", "normal")  # the same names as cmml.models.adapters (which imports torch)
LORA_TARGETS = ("query", "key", "value", "attn_out", "fc1", "fc2")


def _models(params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return params[SECTION]["models"]


def model_hparams(params: dict[str, Any], name: str, where: str = "params.yaml") -> dict[str, Any]:
    """Model ``name``'s block checked against its kind's schema (ints accepted for floats)."""
    key = f"{SECTION}.models.{name}"
    block = _models(params).get(name)
    if not isinstance(block, dict) or block.get("kind") not in KINDS:
        raise ConfigError(f"{where}: key '{key}.kind' must be one of {list(KINDS)}, "
                          f"got {block.get('kind') if isinstance(block, dict) else block!r}")
    schema = {**COMMON, **SCHEMA[block["kind"]]}
    hp = {k: v for k, v in block.items() if k != "kind"}
    for k in sorted(set(schema) ^ set(hp)):
        what = "is missing" if k in schema else f"is not a {block['kind']} hyper-parameter"
        raise ConfigError(f"{where}: key '{key}.{k}' {what} (expected {sorted(schema)})")
    for k, typ in schema.items():
        v = hp[k]
        if typ is float and isinstance(v, int) and not isinstance(v, bool):
            hp[k] = v = float(v)
        if isinstance(v, bool) is not (typ is bool) or not isinstance(v, typ):
            raise ConfigError(f"{where}: key '{key}.{k}' must be {getattr(typ, '__name__', typ)}, got {v!r}")
    for k in ("epochs", "batch_size", *(("rank",) if "rank" in hp else ())):
        if hp[k] <= 0:
            raise ConfigError(f"{where}: key '{key}.{k}' must be positive, got {hp[k]}")
    for k in ("lr", "weight_decay", *(("init_std", "alpha") if "init_std" in hp else ())):
        if hp.get(k, 0.0) < 0:
            raise ConfigError(f"{where}: key '{key}.{k}' must be >= 0, got {hp[k]}")
    if not 0.0 <= hp["warmup"] < 1.0:
        raise ConfigError(f"{where}: key '{key}.warmup' must be a fraction in [0, 1), got {hp['warmup']}")
    if "p" in hp and not 0.0 < hp["p"] <= 1.0:
        raise ConfigError(f"{where}: key '{key}.p' (share of samples losing a modality) must be in (0, 1], got {hp['p']}")
    if "init" in hp and hp["init"] not in SSF_INITS:
        raise ConfigError(f"{where}: key '{key}.init' must be one of {list(SSF_INITS)}, got {hp['init']!r}")
    if "targets" in hp and (not hp["targets"] or not set(hp["targets"]) <= set(LORA_TARGETS)):
        raise ConfigError(f"{where}: key '{key}.targets' must be a non-empty subset of {list(LORA_TARGETS)}, "
                          f"got {hp['targets']!r}")
    if "start" in hp:
        start = _models(params).get(hp["start"])
        if not isinstance(start, dict) or start.get("kind") != "complete":
            raise ConfigError(f"{where}: key '{key}.start' must name a model of kind 'complete' under "
                              f"'{SECTION}.models', got {hp['start']!r}")
    return hp


def all_models(params: dict[str, Any], where: str = "params.yaml") -> dict[str, dict[str, Any]]:
    """Every model's checked hyper-parameters with its ``kind``, in params order."""
    return {n: {**model_hparams(params, n, where), "kind": b["kind"]} for n, b in _models(params).items()}


def validate(params: dict[str, Any], where: str) -> None:
    """Check the ``robust`` section (no torch import)."""
    sec = params.get(SECTION)
    if not isinstance(sec, dict):
        raise ConfigError(f"{where}: key '{SECTION}' must be a mapping")
    expected = {"seeds", "fills", "settings", "missing_rates", "train_per_class", "test_per_class", "models"}
    for k in sorted(expected ^ set(sec)):
        raise ConfigError(f"{where}: key '{SECTION}.{k}' is {'missing' if k in expected else 'unknown'} "
                          f"(expected {sorted(expected)})")
    for k in ("seeds", "fills", "settings", "missing_rates"):
        if not isinstance(sec[k], list) or not sec[k] or len(set(map(str, sec[k]))) != len(sec[k]):
            raise ConfigError(f"{where}: key '{SECTION}.{k}' must be a non-empty list without repeats")
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in sec["seeds"]):
        raise ConfigError(f"{where}: key '{SECTION}.seeds' must hold non-negative integers, got {sec['seeds']}")
    if not set(sec["fills"]) <= set(FILL_POLICIES):
        raise ConfigError(f"{where}: key '{SECTION}.fills' must hold fill policies {list(FILL_POLICIES)}, got {sec['fills']}")
    for s in sec["settings"]:
        if s not in params["settings"]:
            raise ConfigError(f"{where}: key '{SECTION}.settings' names {s!r}, which is not defined under 'settings'")
    if not all(isinstance(r, (int, float)) and not isinstance(r, bool) and 0 <= r <= 1 for r in sec["missing_rates"]):
        raise ConfigError(f"{where}: key '{SECTION}.missing_rates' must hold numbers in [0, 1], got {sec['missing_rates']}")
    for k in ("train_per_class", "test_per_class"):
        v = sec[k]
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
            raise ConfigError(f"{where}: key '{SECTION}.{k}' must be a positive integer or null (every sample), got {v!r}")
    if not isinstance(sec["models"], dict) or not sec["models"]:
        raise ConfigError(f"{where}: key '{SECTION}.models' must map model names to their blocks")
    for name in sec["models"]:
        model_hparams(params, name, where)


def needs(params: dict[str, Any]) -> list[tuple[str, int]]:
    """(setting, seed) pairs: the settings' missing tables and one backbone per seed."""
    sec = params[SECTION]
    return [(s, seed) for seed in sec["seeds"] for s in sec["settings"]]


def report_page(params: dict[str, Any]) -> str:
    """The family's report page (linked from the index)."""
    return f"{REPORT_DIR}/index.html"


def model_dir(bench: str, seed: int, name: str) -> str:
    """Artefact directory of a model (its checkpoints of every fill)."""
    return f"runs/{SECTION}/{bench}/seed{seed}/{name}"


def plan(params: dict[str, Any], data: Any, params_file: str) -> list[Stage]:
    """The family's stages; ``data`` is the shared :class:`cmml.pipeline.plan.DataPaths`."""
    bench = benchmark_id(params)
    sec = params[SECTION]
    models = all_models(params, params_file)
    stages: list[Stage] = []
    evals: list[dict[str, Any]] = []

    def stage(**kw: Any) -> Stage:
        return Stage(params_file=params_file, family=SECTION, **kw)

    for seed in sec["seeds"]:
        shared = {"data": data.prepared, "tasks": data.tasks, "backbone": data.backbone(seed)}
        ckpts = {name: f"{model_dir(bench, seed, name)}/ckpt" for name in models}
        for name, hp in models.items():
            out, start = ckpts[name], ckpts.get(hp.get("start", ""))
            keys = [f"{SECTION}.models.{name}", *([f"{SECTION}.models.{hp['start']}"] if start else [])]
            stages.append(stage(
                name=f"{SECTION}/train/{name}/seed{seed}", handler="cmml.families.robust.train",
                args={"model": name, "fills": sec["fills"], "seed": seed, **shared, "start": start, "out": out},
                deps=[*shared.values(), *([start] if start else [])], outs=[out], dir_outs=[out],
                params=[*keys, f"{SECTION}.train_per_class", *([] if hp["kind"] == "complete" else [f"{SECTION}.fills"]),
                        *MODEL_RUNTIME],
                sidecar=dir_sidecar(out), gpu=True))
        out = f"runs/{SECTION}/{bench}/seed{seed}/eval"
        missing = {s: data.missing(s, seed) for s in sec["settings"]}
        stages.append(stage(
            name=f"{SECTION}/evaluate/seed{seed}", handler="cmml.families.robust.evaluate",
            args={"fills": sec["fills"], "seed": seed, **shared, "missing": missing, "ckpts": ckpts, "out": out},
            deps=[*shared.values(), *missing.values(), *ckpts.values()], outs=[out], dir_outs=[out],
            params=[f"{SECTION}.models", f"{SECTION}.fills", f"{SECTION}.settings", f"{SECTION}.missing_rates",
                    f"{SECTION}.test_per_class",
                    *MODEL_RUNTIME, "runtime.eval_batch_size"],
            sidecar=dir_sidecar(out), gpu=True))
        evals.append({"seed": seed, "eval": out})
    stages.append(stage(
        name=f"{SECTION}/report", handler="cmml.families.robust.report",
        args={"bench": bench, "evals": evals, "metrics": METRICS_JSON, "out": REPORT_DIR},
        deps=[e["eval"] for e in evals], outs=[METRICS_JSON, REPORT_DIR], dir_outs=[REPORT_DIR],
        metrics=[METRICS_JSON], params=["report", SECTION, "settings"], sidecar=dir_sidecar(REPORT_DIR)))
    return stages
