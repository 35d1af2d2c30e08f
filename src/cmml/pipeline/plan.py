"""The stage plan: the one description of the DAG that Snakemake, DVC and the stage CLIs share.

``plan(params)`` returns concrete :class:`Stage` objects (command, deps including the source
files a stage runs, outs, the params keys it reads). The Snakefile turns each into a rule,
``cmml dvc-yaml`` turns the list into dvc.yaml, and each stage CLI looks its own Stage up here
to know what to read, write and record, so the three cannot drift apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cmml.config import Run, benchmark_id, method_chain, method_name, runs
from cmml.errors import ConfigError

SRC = Path("src/cmml")
COMMON_SOURCES = ["__init__.py", "__main__.py", "cli.py", "config.py", "errors.py", "pipeline/atomic.py", "pipeline/plan.py", "pipeline/worker.py",
                  "provenance/hashing.py", "provenance/sidecar.py"]
# Source files each stage kind runs (relative to src/cmml); method files are added per run.
# methods/registry.py is deliberately absent: it is a lookup table, and adding a method's line
# must not retrain every other method (the run's own method file is a dep).
KIND_SOURCES: dict[str, list[str]] = {
    "prepare": ["data/embedded.py", "data/prepare.py", "data/tokenizer.py"],
    "tasks": ["data/tasks.py"],
    "missing": ["data/missing.py", "data/tasks.py"],
    "pretrain": ["data/dataset.py", "data/tokenizer.py", "data/tasks.py", "models/backbone.py", "models/pretrain.py", "train/device.py",
                 "train/loop.py", "eval/metrics.py"],
    "train": ["data/dataset.py", "data/tokenizer.py", "data/tasks.py", "models/backbone.py", "methods/base.py",
              "train/device.py", "train/checkpoint.py", "train/loop.py", "train/stage.py"],
    "evaluate": ["data/dataset.py", "data/tokenizer.py", "data/tasks.py", "models/backbone.py", "methods/base.py",
                 "train/device.py", "train/checkpoint.py", "eval/metrics.py", "eval/stage.py"],
    "aggregate": ["eval/metrics.py", "report/aggregate.py"],
    "report": ["eval/metrics.py", "report/aggregate.py", "report/report.py"],
}
INIT_TASK = -1  # evaluation row of the untrained model (for FWT)


@dataclass(frozen=True)
class Stage:
    """One concrete job of the DAG."""

    name: str
    kind: str
    args: dict[str, Any]
    deps: list[str]
    outs: list[str]
    params: list[str]
    sidecar: str
    dir_outs: list[str] = field(default_factory=list)
    uncached: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)
    gpu: bool = False
    params_file: str = "params.yaml"

    @property
    def cmd(self) -> list[str]:
        """argv of the stage command (identical for Snakemake and DVC)."""
        argv = ["python", "-m", "cmml", self.kind]
        if self.params_file != "params.yaml":
            argv += ["--params", self.params_file]
        for k, v in self.args.items():
            argv += [f"--{k}", str(v)]
        return argv

    @property
    def shell(self) -> str:
        """The command as one shell line."""
        return " ".join(self.cmd)

    @property
    def rule_name(self) -> str:
        """A Snakemake-legal rule name derived from the stage name."""
        return re.sub(r"[^0-9A-Za-z_]", "_", self.name)

    def source_files(self) -> list[str]:
        """The source files among the deps."""
        return [d for d in self.deps if d.startswith(str(SRC))]


def _sources(kind: str, extra: list[str] | None = None) -> list[str]:
    files = COMMON_SOURCES + KIND_SOURCES[kind] + (extra or [])
    return sorted({str(SRC / f) for f in files})


def method_sources(params: dict[str, Any], run: str) -> list[str]:
    """Source files of a method run: the method's module and any module it declares it uses."""
    from cmml.methods.registry import method_files

    return method_files(method_name(params, run))


class Paths:
    """Artefact locations; identity is encoded in the path (benchmark/setting/method/seed/task)."""

    def __init__(self, params: dict[str, Any]):
        self.bench = benchmark_id(params)
        self.root = f"runs/{self.bench}"

    @property
    def data(self) -> str:
        return f"{self.root}/data"

    @property
    def tasks(self) -> str:
        return f"{self.root}/tasks"

    @property
    def backbone(self) -> str:
        return f"{self.root}/backbone"

    def missing(self, setting: str, seed: int) -> str:
        return f"{self.root}/missing/{setting}/seed{seed}"

    def run(self, r: Run) -> str:
        return f"{self.root}/{r.setting}/{r.method}/seed{r.seed}"

    def ckpt(self, r: Run, task: int) -> str:
        return f"{self.run(r)}/task{task}/ckpt"

    def eval(self, r: Run, task: int) -> str:
        label = "init" if task == INIT_TASK else f"task{task}"
        return f"{self.run(r)}/{label}/eval"


RESULTS = "results"
AGG_OUTS = [f"{RESULTS}/metrics.json", f"{RESULTS}/summary.csv", f"{RESULTS}/matrices"]
AGG_SIDECAR = f"{RESULTS}/aggregate.prov.json"
REPORT_DIR = f"{RESULTS}/report"


def is_joint(params: dict[str, Any], run: str) -> bool:
    """Joint training learns all tasks in one stage (upper bound) instead of a task chain."""
    from cmml.methods.registry import is_joint_method

    return is_joint_method(method_name(params, run))


def train_tasks(params: dict[str, Any], r: Run) -> list[int]:
    """Task indices that get a train stage: 0..T-1, or only T-1 (all tasks at once) for joint."""
    t = params["tasks"]["num_tasks"]
    return [t - 1] if is_joint(params, r.method) else list(range(t))


def eval_tasks(params: dict[str, Any], r: Run) -> list[int]:
    """Rows of the accuracy matrix evaluated for a run (plus the untrained row for FWT)."""
    return train_tasks(params, r) if is_joint(params, r.method) else [INIT_TASK, *train_tasks(params, r)]


def plan(params: dict[str, Any], params_file: str = "params.yaml") -> list[Stage]:
    """Every stage of the DAG for ``params`` in a topological order."""
    P = Paths(params)
    pf = params_file
    stages: list[Stage] = []
    tiny = params["backbone"]["source"] == "tiny"
    stages.append(Stage(
        name="prepare", kind="prepare", args={}, deps=_sources("prepare"), outs=[P.data], dir_outs=[P.data],
        params=["benchmark"], sidecar=f"{P.data}/prov.json", params_file=pf))
    stages.append(Stage(
        name="tasks", kind="tasks", args={}, deps=[P.data, *_sources("tasks")], outs=[P.tasks], dir_outs=[P.tasks],
        params=["tasks.num_tasks", "tasks.order_seed"], sidecar=f"{P.tasks}/prov.json", params_file=pf))
    if tiny:
        stages.append(Stage(
            name="pretrain", kind="pretrain", args={}, deps=[P.data, P.tasks, *_sources("pretrain")],
            outs=[P.backbone], dir_outs=[P.backbone], params=["backbone", "pretrain", "runtime.device", "runtime.threads"],
            sidecar=f"{P.backbone}/prov.json", gpu=True, params_file=pf))
    all_runs = runs(params)
    for setting, seed in dict.fromkeys((r.setting, r.seed) for r in all_runs):
        out = P.missing(setting, seed)
        stages.append(Stage(
            name=f"missing/{setting}/seed{seed}", kind="missing", args={"setting": setting, "seed": seed},
            deps=[P.data, P.tasks, *_sources("missing")], outs=[out], dir_outs=[out],
            params=[f"settings.{setting}", "missing.map_compat"], sidecar=f"{out}/prov.json", params_file=pf))
    eval_rows: list[str] = []
    for r in all_runs:
        mkeys = [f"methods.{m}" for m in method_chain(params, r.method)]
        msrc = method_sources(params, r.method)
        common_deps = [P.data, P.tasks, *([P.backbone] if tiny else []), P.missing(r.setting, r.seed)]
        prev: str | None = None
        for t in train_tasks(params, r):
            out = P.ckpt(r, t)
            deps = common_deps + ([prev] if prev else []) + _sources("train", msrc)
            stages.append(Stage(
                name=f"train/{r.setting}/{r.method}/seed{r.seed}/task{t}", kind="train",
                args={"method": r.method, "setting": r.setting, "seed": r.seed, "task": t},
                deps=deps, outs=[out], dir_outs=[out], params=[*mkeys, "tasks.scenario", "runtime.device", "runtime.threads"],
                sidecar=f"{out}/prov.json", gpu=True, params_file=pf))
            prev = out
        for t in eval_tasks(params, r):
            out = P.eval(r, t)
            deps = common_deps + ([] if t == INIT_TASK else [P.ckpt(r, t)]) + _sources("evaluate", msrc)
            stages.append(Stage(
                name=f"evaluate/{r.setting}/{r.method}/seed{r.seed}/{'init' if t == INIT_TASK else f'task{t}'}",
                kind="evaluate", args={"method": r.method, "setting": r.setting, "seed": r.seed, "task": t},
                deps=deps, outs=[out], dir_outs=[out],
                params=[*mkeys, "tasks.scenario", "runtime.device", "runtime.threads", "runtime.eval_batch_size"],
                sidecar=f"{out}/prov.json", gpu=True, params_file=pf))
            eval_rows.append(out)
    stages.append(Stage(
        name="aggregate", kind="aggregate", args={}, deps=[P.tasks, *eval_rows, *_sources("aggregate")],
        outs=[*AGG_OUTS, AGG_SIDECAR], dir_outs=[f"{RESULTS}/matrices"], uncached=[*AGG_OUTS, AGG_SIDECAR],
        metrics=[f"{RESULTS}/metrics.json"],
        params=["experiments", "tasks.num_tasks", *sorted({f"methods.{m}" for r in all_runs for m in method_chain(params, r.method)}),
                "benchmark.name", "benchmark.variant"], sidecar=AGG_SIDECAR, params_file=pf))
    stages.append(Stage(
        name="report", kind="report", args={}, deps=[*AGG_OUTS, AGG_SIDECAR, *_sources("report")], outs=[REPORT_DIR],
        dir_outs=[REPORT_DIR], uncached=[REPORT_DIR], params=["report", "settings", "experiments"],
        sidecar=f"{REPORT_DIR}/prov.json", params_file=pf))
    return stages


def find(stages: list[Stage], name: str) -> Stage:
    """The stage called ``name``; ConfigError listing near names when absent."""
    for s in stages:
        if s.name == name:
            return s
    kinds = sorted({s.name.split("/")[0] for s in stages})
    raise ConfigError(f"no stage named {name!r} in the plan for this params file (stage kinds: {kinds}); "
                      "is the method/setting/seed listed under 'experiments'?")
