"""The stage plan: the one description of the DAG that Snakemake, DVC and the stage CLI share.

``plan(params)`` returns concrete :class:`~cmml.pipeline.stage.Stage` objects in a topological
order: the ``code`` stage (fingerprints of every stage's code), the shared data stages of the
benchmark (prepare, tasks, missing tables per (setting, seed), one backbone per seed), every
active family's stages, and the results index. The Snakefile turns each stage into a rule,
``cmml dvc-yaml`` renders dvc.yaml from the list, and ``cmml run <name>`` finds a stage here, so
the three cannot drift apart.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from cmml.config import benchmark_id, load_params, validate
from cmml.data.benchmarks.registry import load as load_benchmark
from cmml.data.benchmarks.registry import module_of
from cmml.errors import ConfigError
from cmml.families.registry import active, family
from cmml.pipeline.sources import PKG_DIR, SRC, closure, rel_path
from cmml.pipeline.stage import CODE_DIR, CODE_STAGE, PARAMS_DIR, PARAMS_STAGE, Stage, dir_sidecar

INDEX_MD = "results/index.md"
INDEX_HTML = "results/index.html"
INDEX_SIDECAR = "results/index.prov.json"


def backbone_slug(ref: str) -> str:
    """Directory name of an imported pretrained backbone (hub id or local path)."""
    return re.sub(r"[^0-9A-Za-z._-]+", "--", ref.strip("/")).strip("-.") or "backbone"


class DataPaths:
    """Locations of the shared, per-benchmark artefacts (``runs/data/<benchmark>/...``)."""

    def __init__(self, params: dict[str, Any]):
        self.bench = benchmark_id(params)
        self.root = f"runs/data/{self.bench}"
        self.source = params["backbone"]["source"]
        self.pretrained = params["backbone"]["pretrained"]

    @property
    def prepared(self) -> str:
        return f"{self.root}/prepared"

    @property
    def tasks(self) -> str:
        return f"{self.root}/tasks"

    def missing(self, setting: str, seed: int) -> str:
        return f"{self.root}/missing/{setting}/seed{seed}"

    def backbone(self, seed: int) -> str:
        """The frozen backbone a run of ``seed`` uses: pretrained per seed (tiny) or one imported model."""
        if self.source == "tiny":
            return f"{self.root}/backbone/seed{seed}"
        return f"runs/data/backbones/{backbone_slug(self.pretrained)}"


def local_dep(ref: str) -> str | None:
    """``ref`` as a dependency path when it exists (repository-relative when inside the project), else None."""
    local = Path(ref).expanduser()
    if not local.exists():
        return None
    if local.resolve().is_relative_to(Path.cwd().resolve()):
        local = local.resolve().relative_to(Path.cwd().resolve())  # provenance stays repository-relative
    return local.as_posix()


def data_stages(params: dict[str, Any], needs: list[tuple[str, int]], pf: str) -> list[Stage]:
    """prepare, tasks, the missing tables and backbones the families need."""
    D = DataPaths(params)
    bench_module = module_of(params["benchmark"]["name"])
    raw = [local_dep(r.path) for r in load_benchmark(bench_module).raw_files(params["benchmark"])]
    out: list[Stage] = [
        Stage(name="data/prepare", handler="cmml.data.prepare", entries=(bench_module,),
              args={"benchmark_module": bench_module, "out": D.prepared}, deps=[r for r in raw if r], outs=[D.prepared],
              dir_outs=[D.prepared], params=["benchmark"], sidecar=dir_sidecar(D.prepared), params_file=pf),
        Stage(name="data/tasks", handler="cmml.data.tasks", args={"data": D.prepared, "out": D.tasks}, deps=[D.prepared],
              outs=[D.tasks], dir_outs=[D.tasks], params=["tasks.num_tasks", "tasks.order_seed"],
              sidecar=dir_sidecar(D.tasks), params_file=pf),
    ]
    for setting, seed in dict.fromkeys(needs):
        o = D.missing(setting, seed)
        out.append(Stage(
            name=f"data/missing/{setting}/seed{seed}", handler="cmml.data.missing",
            args={"setting": setting, "seed": seed, "data": D.prepared, "tasks": D.tasks, "out": o},
            deps=[D.prepared, D.tasks], outs=[o], dir_outs=[o], params=[f"settings.{setting}", "missing.map_compat"],
            sidecar=dir_sidecar(o), params_file=pf))
    runtime = ["runtime.device", "runtime.threads"]
    if D.source == "tiny":
        for seed in sorted({seed for _, seed in needs}):
            o = D.backbone(seed)
            out.append(Stage(
                name=f"data/pretrain/seed{seed}", handler="cmml.models.pretrain",
                args={"seed": seed, "data": D.prepared, "tasks": D.tasks, "out": o}, deps=[D.prepared, D.tasks],
                outs=[o], dir_outs=[o], params=["backbone.tiny", "pretrain", "data", *runtime], sidecar=dir_sidecar(o),
                gpu=True, params_file=pf))
    else:
        o = D.backbone(0)
        ref = D.pretrained
        local = local_dep(ref)
        out.append(Stage(
            name="data/backbone", handler="cmml.models.import_backbone",
            args={"ref": ref, "max_text_len": params["benchmark"]["max_text_len"], "out": o},
            deps=[local] if local else [], outs=[o], dir_outs=[o],
            params=["backbone.pretrained", "benchmark.max_text_len"], sidecar=dir_sidecar(o), params_file=pf))
    return out


def load(params_file: str | Path = "params.yaml") -> dict[str, Any]:
    """Read params and validate the shared sections and every active family's section."""
    params = load_params(params_file)
    validate_families(params, str(params_file))
    return params


def validate_families(params: dict[str, Any], where: str) -> None:
    """The benchmark checks its keys, each active family its section; at least one family must be active."""
    try:
        load_benchmark(module_of(params["benchmark"]["name"])).validate(params["benchmark"], where)
    except ConfigError as exc:
        raise ConfigError(str(exc) if str(exc).startswith(where) else f"{where}: {exc}") from None
    names = active(params)
    if not names:
        from cmml.families.registry import FAMILIES

        raise ConfigError(f"{where}: no experiment family configured; add a section for one of {sorted(FAMILIES)}")
    for name in names:
        family(name).validate(params, where)


def check_package_location(root: Path = Path(".")) -> None:
    """ConfigError unless the imported cmml package is the project's ``src/cmml`` (when it has one).

    Stages depend on ``src/cmml/...`` paths and their fingerprints are computed from the imported
    package, so both must be the same files.
    """
    local = (root / SRC / "cmml").resolve()
    if local.is_dir() and local != PKG_DIR.resolve():
        raise ConfigError(f"the cmml package is imported from {PKG_DIR}, not from this project's {local}: "
                          f"install the project (`pip install -e .`) or set PYTHONPATH={local.parent}")


def plan(params: dict[str, Any], params_file: str = "params.yaml") -> list[Stage]:
    """Every stage of the DAG for ``params`` in a topological order."""
    check_package_location()
    validate(params, params_file)
    validate_families(params, params_file)
    D = DataPaths(params)
    fams = [family(n) for n in active(params)]
    needs = [pair for fam in fams for pair in fam.needs(params)]
    stages = data_stages(params, needs, params_file)
    for fam in fams:
        stages += fam.plan(params, D, params_file)
    pages = {n: family(n).report_page(params) for n in active(params)}
    report_outs = [o for s in stages if s.name.endswith("/report") for o in s.outs]
    stages.append(Stage(
        name="index", handler="cmml.report.index", args={"pages": pages, "md": INDEX_MD, "html": INDEX_HTML},
        deps=report_outs, outs=[INDEX_MD, INDEX_HTML],
        params=["report"], sidecar=INDEX_SIDECAR, params_file=params_file))
    names = [s.name for s in stages]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"{params_file}: two stages share the name(s) {dup}")
    stages.insert(0, params_stage(stages, params_file))
    files = {s.code_file: s.code_entries for s in stages if s.code_file}
    return [code_stage(files, params_file), *stages]


def code_stage(files: dict[str, tuple[str, ...]], params_file: str = "params.yaml") -> Stage:
    """The one stage writing every fingerprint file ``files`` ({path: entry modules}).

    One stage instead of one per file: a source edit reruns it (milliseconds) and rewrites every
    file, byte-identical where the closure did not change, so both tools rerun only the consumers
    of the files that changed, and DVC keeps 45 fewer stages to check and lock.
    """
    deps = sorted({rel_path(m) for entries in files.values() for m in closure(entries)})
    return Stage(name=CODE_STAGE, handler="cmml.pipeline.fingerprints",
                 args={"files": {f: list(e) for f, e in sorted(files.items())}}, deps=deps, outs=sorted(files),
                 params=[], sidecar=dir_sidecar(CODE_DIR), params_file=params_file)


def params_stage(stages: list[Stage], params_file: str = "params.yaml") -> Stage:
    """The stage writing each of ``stages``' params file for DVC (see :mod:`cmml.pipeline.params_split`)."""
    split = {s.params_split: sorted(s.params) for s in stages if s.params_split}
    return Stage(name=PARAMS_STAGE, handler="cmml.pipeline.params_split", args={"files": split, "out": PARAMS_DIR},
                 deps=[params_file], outs=[PARAMS_DIR], dir_outs=[PARAMS_DIR], params=[], sidecar=dir_sidecar(PARAMS_DIR),
                 params_file=params_file, args_in_cmd=True)


def critical_depths(stages: list[Stage]) -> dict[str, int]:
    """Per stage, the number of stages on the longest path from it to the end of the DAG (itself included).

    Snakemake runs the deepest ready stages first (its ``priority``), so long task chains start early
    instead of trailing alone on one core at the end of a run. ``stages`` must be in a topological order.
    """
    producer = {o: s.name for s in stages for o in s.outs}
    depth: dict[str, int] = {}
    consumers: dict[str, set[str]] = {s.name: set() for s in stages}
    for s in stages:
        for d in s.all_deps:
            if d in producer and producer[d] != s.name:
                consumers[producer[d]].add(s.name)
    for s in reversed(stages):
        depth[s.name] = 1 + max((depth[c] for c in consumers[s.name]), default=0)
    return depth


def find(stages: list[Stage], name: str) -> Stage:
    """The stage called ``name``; ConfigError listing the stage groups when absent."""
    for s in stages:
        if s.name == name:
            return s
    groups = sorted({"/".join(s.name.split("/")[:2]) for s in stages})
    raise ConfigError(f"no stage named {name!r} in the plan for this params file (stage groups: {groups}); "
                      "is the method/setting/seed listed under the family's 'experiments'?")
