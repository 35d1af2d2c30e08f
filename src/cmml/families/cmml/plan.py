"""The cmml family's stages: one stage per run (train its tasks, then score them), then aggregate and report.

Artefacts live under ``runs/cmml/<benchmark>/<setting>/<method>/seed<k>/`` (``ckpt/task<t>`` per
task and ``eval`` with every row of the run's score matrix, both written by the run's stage and
described by ``run.prov.json``), results under ``results/cmml/``.
Granularity: one stage per run. It trains the run's tasks in sequence (:mod:`cmml.train.chain`:
each task starts from the previous checkpoint read back from disk, and a killed stage resumes at
its first unfinished task), then scores the untrained model and every checkpoint on every task's
test split. The per-stage fixed cost of both workflow tools and of loading the run's context is
paid once per run. The price: an edit of the evaluation code (or ``runtime.eval_batch_size``)
retrains the runs; the metrics over score matrices (:mod:`cmml.families.cmml.aggregate`) stay
outside the run stages, so a new summary metric reruns only the aggregate.
"""

from __future__ import annotations

from typing import Any

from cmml.config import benchmark_id
from cmml.errors import ConfigError
from cmml.families.cmml.runs import INIT_ROW, SECTION, Run, method_block, method_chain, runs
from cmml.methods.registry import METHODS, entry, get_method
from cmml.pipeline.stage import Stage, dir_sidecar

RESULTS = f"results/{SECTION}"
METRICS_JSON = f"{RESULTS}/metrics.json"
SUMMARY_CSV = f"{RESULTS}/summary.csv"
MATRICES = f"{RESULTS}/matrices"
AGG_SIDECAR = f"{RESULTS}/aggregate.prov.json"
REPORT_DIR = f"{RESULTS}/report"
MODEL_RUNTIME = ["runtime.device", "runtime.threads"]
NPROC = "runtime.nproc_per_stage"  # train stages only: data-parallel processes per stage


def validate(params: dict[str, Any], where: str) -> None:
    """Check the ``cmml`` section: method runs (registered methods, ``base`` chains) and experiments."""
    sec = params.get(SECTION)
    if not isinstance(sec, dict) or not isinstance(sec.get("methods"), dict) or not isinstance(sec.get("experiments"), dict):
        raise ConfigError(f"{where}: key '{SECTION}' must hold the mappings 'methods' and 'experiments'")
    for run in sec["methods"]:
        name = method_block(params, run, where).get("method")
        if name not in METHODS:
            raise ConfigError(f"{where}: key '{SECTION}.methods.{run}.method' names unknown method {name!r}; "
                              f"known: {sorted(METHODS)}")
    if not sec["experiments"]:
        raise ConfigError(f"{where}: key '{SECTION}.experiments' must list at least one experiment")
    pools = {"methods": sec["methods"], "settings": params["settings"]}
    for exp, body in sec["experiments"].items():
        if not isinstance(body, dict):
            raise ConfigError(f"{where}: key '{SECTION}.experiments.{exp}' must be a mapping")
        for k in ("methods", "settings", "seeds"):
            vals = body.get(k)
            if not isinstance(vals, list) or not vals:
                raise ConfigError(f"{where}: key '{SECTION}.experiments.{exp}.{k}' must be a non-empty list")
            for v in vals:
                if k == "seeds":
                    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                        raise ConfigError(f"{where}: key '{SECTION}.experiments.{exp}.seeds' must hold non-negative "
                                          f"integers, got {v!r}")
                elif v not in pools[k]:
                    raise ConfigError(f"{where}: key '{SECTION}.experiments.{exp}.{k}' names {v!r}, which is not "
                                      f"defined under '{'settings' if k == 'settings' else SECTION + '.methods'}'")


def check_hparams(params: dict[str, Any], where: str) -> None:
    """Every method run's hyper-parameters against its method's schema (imports the method modules).

    Bases are checked before the runs that extend them, so an error names the block that holds the value.
    """
    runs_ = params[SECTION]["methods"]
    for run in sorted(runs_, key=lambda r: len(method_chain(params, r, where))):
        block = method_block(params, run, where)
        get_method(block["method"]).resolve_hparams(block, f"{where}: {SECTION}.methods.{run}")


def needs(params: dict[str, Any]) -> list[tuple[str, int]]:
    """(setting, seed) pairs of every run: their missing tables and seed backbones."""
    return list(dict.fromkeys((r.setting, r.seed) for r in runs(params)))


def report_page(params: dict[str, Any]) -> str:
    """The family's report page (linked from the index)."""
    return f"{REPORT_DIR}/index.html"


def run_dir(bench: str, r: Run) -> str:
    """Directory of a run's artefacts."""
    return f"runs/{SECTION}/{bench}/{r.setting}/{r.method}/seed{r.seed}"


def plan(params: dict[str, Any], data: Any, params_file: str) -> list[Stage]:
    """The family's stages; ``data`` is the shared :class:`cmml.pipeline.plan.DataPaths`."""
    bench = benchmark_id(params)
    num_tasks = params["tasks"]["num_tasks"]
    stages: list[Stage] = []
    evals: list[dict[str, Any]] = []
    method_keys: set[str] = set()

    def stage(**kw: Any) -> Stage:
        return Stage(params_file=params_file, family=SECTION, **kw)

    for r in runs(params):
        name = method_block(params, r.method)["method"]
        module, joint = entry(name).module, entry(name).joint
        mkeys = [f"{SECTION}.methods.{m}" for m in method_chain(params, r.method)]
        method_keys.update(mkeys)
        shared = {"data": data.prepared, "tasks": data.tasks, "missing": data.missing(r.setting, r.seed),
                  "backbone": data.backbone(r.seed)}
        common = {"run": r.method, "method": name, "method_module": module, "setting": r.setting, "seed": r.seed,
                  "joint": joint, "num_tasks": num_tasks, **shared}
        train_rows = [num_tasks - 1] if joint else list(range(num_tasks))
        rows = train_rows if joint else [INIT_ROW, *train_rows]
        ckpt, out = f"{run_dir(bench, r)}/ckpt", f"{run_dir(bench, r)}/eval"
        stages.append(stage(
            name=f"{SECTION}/run/{r.key}", handler="cmml.families.cmml.train", entries=(module,),
            args={**common, "out": ckpt, "task_ids": train_rows, "rows": rows, "eval": out},
            deps=list(shared.values()), outs=[ckpt, out], dir_outs=[ckpt, out],
            params=[*mkeys, "tasks.scenario", "data", *MODEL_RUNTIME, NPROC, "runtime.eval_batch_size"],
            sidecar=f"{run_dir(bench, r)}/run.prov.json", gpu=True, nproc=params["runtime"]["nproc_per_stage"]))
        evals.append({"method": r.method, "setting": r.setting, "seed": r.seed, "rows": rows, "eval": out})
    agg_outs = [METRICS_JSON, SUMMARY_CSV, MATRICES]
    stages.append(stage(
        name=f"{SECTION}/aggregate", handler="cmml.families.cmml.aggregate",
        args={"bench": bench, "num_tasks": num_tasks, "runs": evals, "metrics": METRICS_JSON, "summary": SUMMARY_CSV,
              "matrices": MATRICES},
        deps=[data.tasks, *(e["eval"] for e in evals)], outs=agg_outs, dir_outs=[MATRICES], metrics=[METRICS_JSON],
        params=[f"{SECTION}.experiments", "tasks.num_tasks", *sorted(method_keys), "benchmark.name", "benchmark.variant"],
        sidecar=AGG_SIDECAR))
    stages.append(stage(
        name=f"{SECTION}/report", handler="cmml.families.cmml.report",
        args={"metrics": METRICS_JSON, "summary": SUMMARY_CSV, "matrices": MATRICES, "out": REPORT_DIR,
              "runs": [{k: e[k] for k in ("method", "setting", "seed")} for e in evals]},
        deps=agg_outs, outs=[REPORT_DIR], dir_outs=[REPORT_DIR],
        params=["report", "settings", f"{SECTION}.experiments"], sidecar=dir_sidecar(REPORT_DIR)))
    return stages
