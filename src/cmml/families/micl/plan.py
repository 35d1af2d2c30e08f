"""The micl family's params section and stages.

``params["micl"]``: ``data``, ``encoders``, ``lm``, ``lora``, ``generation``, ``orders`` (name -> task
list), ``methods`` (run name -> {method, hyper-parameters}; ``base:`` inherits) and ``experiments``
(name -> methods × orders × seeds). A per-step hyper-parameter (``alpha_fusion``, ``pseudo_num``,
``lambda_kl``) is a number, a list with one value per step, or a mapping order -> list.

Stages: ``micl/prepare`` (data), ``micl/pretrain/seed<k>`` (encoders + LM), per run
``micl/run/<order>/<run>/seed<k>`` (its steps in sequence, step t from t-1's checkpoint ``ckpt/task<t>``,
joint: one step; then every checkpoint scored into ``eval``), then ``micl/aggregate`` and ``micl/report``.
Artefacts under ``runs/micl/``, results under ``results/micl/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cmml.config import block_chain, merged_block
from cmml.errors import ConfigError
from cmml.families.micl.tasks import TASKS
from cmml.pipeline.stage import Stage, dir_sidecar, task_ckpt

SECTION = "micl"
RESULTS = f"results/{SECTION}"
METRICS_JSON = f"{RESULTS}/metrics.json"
SUMMARY_CSV = f"{RESULTS}/summary.csv"
MATRICES = f"{RESULTS}/matrices"
REPORT_DIR = f"{RESULTS}/report"
DATA = f"runs/{SECTION}/data"
RUNTIME = ["runtime.device", "runtime.threads"]
PER_STEP = ("alpha_fusion", "pseudo_num", "lambda_kl")
COMMON_HP = {"epochs": int, "batch_size": int, "lr": float, "weight_decay": float, "warmup": float}
METHOD_HP = {
    "finetune": {},
    "joint": {},
    "lwf": {"lambda_lwf": float, "temperature": float},
    "replay": {"memory_per_task": int, "replay_per_batch": int},
    "ewc": {"lambda_ewc": float, "fisher_batches": int},
    "moincl": {"ptgm": bool, "ikd": bool, "fusion": bool, "as_released": bool, "fuse_projections": bool,
               "alpha_fusion": float, "pseudo_num": int, "lambda_kl": float, "temperature": float,
               "ikd_samples": int, "ikd_weight": float},
}
JOINT = {"joint"}
BLOCKS = {
    "data": {"seed": int, "train": int, "test": int, "pretrain_items": int, "lm_captions": int, "instructions": int},
    "encoders": {"width": int, "epochs": int, "batch_size": int, "lr": float},
    "lm": {"source": str, "path": str, "hidden": int, "layers": int, "heads": int, "positions": int, "epochs": int,
           "batch_size": int, "lr": float},
    "lora": {"r": int, "alpha": int, "dropout": float},
    "generation": {"num_beams": int, "max_new_tokens": int, "repetition_penalty": float, "batch_size": int},
}


@dataclass(frozen=True)
class Run:
    """One continual run: a method run name on a task order with a seed."""

    method: str
    order: str
    seed: int

    @property
    def key(self) -> str:
        """``<order>/<method>/seed<k>``: the run's identity in stage names and paths."""
        return f"{self.order}/{self.method}/seed{self.seed}"


def _number(v: Any, kind: type) -> bool:
    if isinstance(v, bool):
        return kind is bool
    return isinstance(v, int) if kind is int else isinstance(v, (int, float)) if kind is float else isinstance(v, kind)


def method_block(params: dict[str, Any], run: str, where: str = "params.yaml") -> dict[str, Any]:
    """The merged block of a method run (``base:`` chain resolved)."""
    return merged_block(params[SECTION]["methods"], run, f"{SECTION}.methods", where)


def step_value(value: Any, order: str, step: int) -> Any:
    """The value of a per-step hyper-parameter at ``step`` of ``order``."""
    if isinstance(value, dict):
        value = value[order]
    return value[step] if isinstance(value, list) else value


def resolve(params: dict[str, Any], run: str, order: str, step: int) -> dict[str, Any]:
    """The hyper-parameters of ``run`` at ``step`` of ``order`` (per-step values resolved)."""
    block = method_block(params, run)
    return {k: step_value(v, order, step) if k in PER_STEP else v for k, v in block.items() if k != "method"}


def validate(params: dict[str, Any], where: str) -> None:
    """Check the ``micl`` section: blocks, orders, method runs with every hyper-parameter, experiments."""
    sec = params.get(SECTION)
    if not isinstance(sec, dict):
        raise ConfigError(f"{where}: key '{SECTION}' must be a mapping")
    for block, keys in BLOCKS.items():
        body = sec.get(block)
        if not isinstance(body, dict):
            raise ConfigError(f"{where}: key '{SECTION}.{block}' must be a mapping with keys {sorted(keys)}")
        for k, kind in keys.items():
            if k not in body or not _number(body[k], kind):
                raise ConfigError(f"{where}: key '{SECTION}.{block}.{k}' must be a {kind.__name__}, got {body.get(k)!r}")
            if kind in (int, float) and body[k] < 0:
                raise ConfigError(f"{where}: key '{SECTION}.{block}.{k}' must be >= 0, got {body[k]}")
    if sec["lm"]["source"] not in ("tiny", "pretrained"):
        raise ConfigError(f"{where}: key '{SECTION}.lm.source' must be 'tiny' or 'pretrained', got {sec['lm']['source']!r}")
    if sec["lm"]["source"] == "pretrained" and not sec["lm"]["path"]:
        raise ConfigError(f"{where}: key '{SECTION}.lm.path' must name a local save_pretrained directory when "
                          f"{SECTION}.lm.source is 'pretrained'")
    if sec["lm"]["hidden"] % max(sec["lm"]["heads"], 1):
        raise ConfigError(f"{where}: key '{SECTION}.lm.hidden' must be divisible by {SECTION}.lm.heads")
    orders = sec.get("orders")
    if not isinstance(orders, dict) or not orders:
        raise ConfigError(f"{where}: key '{SECTION}.orders' must map order names to task lists")
    for name, tasks in orders.items():
        if not isinstance(tasks, list) or len(tasks) < 2 or len(set(tasks)) != len(tasks) or any(t not in TASKS for t in tasks):
            raise ConfigError(f"{where}: key '{SECTION}.orders.{name}' must list at least 2 distinct tasks of "
                              f"{sorted(TASKS)}, got {tasks!r}")
    methods = sec.get("methods")
    if not isinstance(methods, dict) or not methods:
        raise ConfigError(f"{where}: key '{SECTION}.methods' must map run names to method blocks")
    for run in methods:
        block_chain(methods, run, f"{SECTION}.methods", where)
        block = method_block(params, run, where)
        _check_run(block, run, orders, where)
    exps = sec.get("experiments")
    if not isinstance(exps, dict) or not exps:
        raise ConfigError(f"{where}: key '{SECTION}.experiments' must list at least one experiment")
    for exp, body in exps.items():
        pools = {"methods": methods, "orders": orders}
        for k in ("methods", "orders", "seeds"):
            vals = body.get(k) if isinstance(body, dict) else None
            if not isinstance(vals, list) or not vals:
                raise ConfigError(f"{where}: key '{SECTION}.experiments.{exp}.{k}' must be a non-empty list")
            for v in vals:
                if k == "seeds" and not (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
                    raise ConfigError(f"{where}: key '{SECTION}.experiments.{exp}.seeds' must hold non-negative integers, got {v!r}")
                if k != "seeds" and v not in pools[k]:
                    raise ConfigError(f"{where}: key '{SECTION}.experiments.{exp}.{k}' names {v!r}, not defined under "
                                      f"'{SECTION}.{k}'")


def _check_run(block: dict[str, Any], run: str, orders: dict[str, list[str]], where: str) -> None:
    name = block.get("method")
    if name not in METHOD_HP:
        raise ConfigError(f"{where}: key '{SECTION}.methods.{run}.method' names unknown method {name!r}; known: {sorted(METHOD_HP)}")
    schema = {**COMMON_HP, **METHOD_HP[name]}
    extra = sorted(set(block) - set(schema) - {"method"})
    if extra:
        raise ConfigError(f"{where}: key '{SECTION}.methods.{run}' has unknown keys {extra} for method {name!r}")
    for k, kind in schema.items():
        key = f"{SECTION}.methods.{run}.{k}"
        if k not in block:
            raise ConfigError(f"{where}: key '{key}' is missing")
        v = block[k]
        if k in PER_STEP:
            per_order = v if isinstance(v, dict) else {o: v for o in orders}
            for o, vals in per_order.items():
                if o not in orders:
                    raise ConfigError(f"{where}: key '{key}' names unknown order {o!r}")
                lst = vals if isinstance(vals, list) else None
                if lst is not None and len(lst) != len(orders[o]):
                    raise ConfigError(f"{where}: key '{key}' must hold one value per step of {o} ({len(orders[o])}), got {len(lst)}")
                for x in lst if lst is not None else [vals]:
                    if not _number(x, kind) or x < 0 or (k == "alpha_fusion" and x > 1):
                        raise ConfigError(f"{where}: key '{key}' must hold {kind.__name__}s >= 0"
                                          f"{' and <= 1' if k == 'alpha_fusion' else ''}, got {x!r}")
            if isinstance(v, dict) and set(v) != set(orders):
                raise ConfigError(f"{where}: key '{key}' must give values for every order {sorted(orders)}, got {sorted(v)}")
        elif not _number(v, kind) or (kind is not bool and v < 0):
            raise ConfigError(f"{where}: key '{key}' must be a non-negative {kind.__name__}, got {v!r}")
    if block["batch_size"] < 1 or block["epochs"] < 1:
        raise ConfigError(f"{where}: keys '{SECTION}.methods.{run}.batch_size/epochs' must be >= 1")


def runs(params: dict[str, Any]) -> list[Run]:
    """Every (method run, order, seed) of every experiment, deduplicated, in a stable order."""
    seen: dict[Run, None] = {}
    for exp in params[SECTION]["experiments"].values():
        for o in exp["orders"]:
            for m in exp["methods"]:
                for s in exp["seeds"]:
                    seen[Run(m, o, s)] = None
    return list(seen)


def needs(params: dict[str, Any]) -> list[tuple[str, int]]:
    """The family reads none of the shared missing tables or backbones."""
    return []


def report_page(params: dict[str, Any]) -> str:
    """The family's report page."""
    return f"{REPORT_DIR}/index.html"


def run_dir(r: Run) -> str:
    """Directory of a run's artefacts."""
    return f"runs/{SECTION}/{r.order}/{r.method}/seed{r.seed}"


def plan(params: dict[str, Any], data: Any, params_file: str) -> list[Stage]:
    """The family's stages (``data``, the shared paths, is unused: the family has its own data)."""
    sec = params[SECTION]
    stages: list[Stage] = []

    def stage(**kw: Any) -> Stage:
        return Stage(params_file=params_file, family=SECTION, **kw)

    stages.append(stage(name=f"{SECTION}/prepare", handler="cmml.families.micl.prepare", args={"out": DATA}, deps=[],
                        outs=[DATA], dir_outs=[DATA], params=[f"{SECTION}.data"], sidecar=dir_sidecar(DATA)))
    all_runs = runs(params)
    lm_dir = [sec["lm"]["path"]] if sec["lm"]["source"] == "pretrained" else []  # an imported LM is a tracked input
    for seed in sorted({r.seed for r in all_runs}):
        out = f"runs/{SECTION}/pretrain/seed{seed}"
        stages.append(stage(name=f"{SECTION}/pretrain/seed{seed}", handler="cmml.families.micl.pretrain",
                            args={"seed": seed, "data": DATA, "out": out}, deps=[DATA, *lm_dir], outs=[out], dir_outs=[out],
                            params=[f"{SECTION}.encoders", f"{SECTION}.lm", *RUNTIME], sidecar=dir_sidecar(out), gpu=True))
    evals = []
    model_keys = [f"{SECTION}.lora", *RUNTIME]
    for r in all_runs:
        block = method_block(params, r.method)
        name, tasks = block["method"], sec["orders"][r.order]
        mkeys = [f"{SECTION}.methods.{m}" for m in block_chain(sec["methods"], r.method, f"{SECTION}.methods")]
        pre = f"runs/{SECTION}/pretrain/seed{r.seed}"
        common = {"run": r.method, "method": name, "order": r.order, "seed": r.seed, "tasks": tasks, "data": DATA,
                  "pretrained": pre}
        steps = [len(tasks) - 1] if name in JOINT else list(range(len(tasks)))
        ckpt, out = f"{run_dir(r)}/ckpt", f"{run_dir(r)}/eval"
        stages.append(stage(
            name=f"{SECTION}/run/{r.key}", handler="cmml.families.micl.train",
            entries=(f"cmml.families.micl.methods.{name}",),
            args={**common, "out": ckpt, "task_ids": steps, "eval": out,
                  "hparams": {str(t): resolve(params, r.method, r.order, t) for t in steps}},
            deps=[DATA, pre], outs=[ckpt, out], dir_outs=[ckpt, out],
            params=[*mkeys, f"{SECTION}.orders.{r.order}", f"{SECTION}.generation", *model_keys],
            sidecar=f"{run_dir(r)}/run.prov.json", gpu=True))
        evals.append({"method": r.method, "order": r.order, "seed": r.seed, "eval": out})
    agg_outs = [METRICS_JSON, SUMMARY_CSV, MATRICES]
    stages.append(stage(
        name=f"{SECTION}/aggregate", handler="cmml.families.micl.aggregate",
        args={"runs": evals, "metrics": METRICS_JSON, "summary": SUMMARY_CSV, "matrices": MATRICES},
        deps=[e["eval"] for e in evals], outs=agg_outs, dir_outs=[MATRICES], metrics=[METRICS_JSON],
        params=[f"{SECTION}.experiments", f"{SECTION}.orders"], sidecar=f"{RESULTS}/aggregate.prov.json"))
    stages.append(stage(
        name=f"{SECTION}/report", handler="cmml.families.micl.report",
        args={"metrics": METRICS_JSON, "summary": SUMMARY_CSV, "matrices": MATRICES, "out": REPORT_DIR,
              "runs": [{k: e[k] for k in ("method", "order", "seed")} for e in evals]},
        deps=agg_outs, outs=[REPORT_DIR], dir_outs=[REPORT_DIR],
        params=["report", f"{SECTION}.experiments", f"{SECTION}.orders"], sidecar=dir_sidecar(REPORT_DIR)))
    return stages
