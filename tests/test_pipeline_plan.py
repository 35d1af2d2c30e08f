"""One source of truth and code-derived dependencies.

dvc.yaml is generated from the plan and must be current; the plan is a DAG with unique names;
every stage's code identity is the import closure of its entry modules (checked against an
independent bytecode scan), fingerprints ignore docstrings, edits rerun exactly the stages
whose closure holds the edited module, and the package has no import cycles.
"""

from __future__ import annotations

import json
import modulefinder
import re
import shutil
from pathlib import Path

import pytest
import yaml

from cmml.pipeline import sources
from cmml.pipeline.dvcgen import differences, expected, render
from cmml.pipeline.plan import critical_depths, load, plan

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def stages():
    return plan(load(ROOT / "params.yaml"))


def test_committed_dvc_yaml_is_up_to_date(monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    assert differences(expected("params.yaml")) == [], "dvc.yaml files are stale: run `cmml dvc-yaml`"


def test_dvc_files_are_small_and_hold_every_stage_once(stages) -> None:
    """One dvc.yaml per stage group and seed (each with its own dvc.lock, whose size does not grow with
    the number of seeds, settings or methods), every stage run from the root."""
    files = {p: yaml.safe_load(t)["stages"] for p, t in render(stages).items()}
    held = [n for body in files.values() for n in body]
    assert sorted(held) == sorted(s.dvc_name for s in stages)
    params = load(ROOT / "params.yaml")
    T = max(params["tasks"]["num_tasks"], *(len(o) for o in params.get("micl", {}).get("orders", {}).values()))
    runs = {p: len(b) for p, b in files.items() if p.startswith(("pipelines/cmml/", "pipelines/micl/"))}
    assert max(runs.values()) <= T + 1, runs  # one run's tasks + its evaluation
    data = {p: len(b) for p, b in files.items() if p.startswith("pipelines/data/")}
    assert max(data.values()) <= len(params["settings"]) + 1, data  # a seed's missing tables + its backbone
    fams = ("cmml", "robust", "micl")
    assert all(re.search(r"/seed\d+/dvc.yaml$", p) for p in files
               if p.startswith(("pipelines/cmml/", "pipelines/micl/")) and p not in {f"pipelines/{f}/dvc.yaml" for f in fams})
    for path, body in files.items():
        depth = path.count("/")
        assert all(e.get("wdir", ".") == "/".join([".."] * depth or ["."]) for e in body.values()), path
    # the root file holds only the index (so `dvc repro` reproduces everything); a family's unseeded stages, the
    # params and the code stage each have their own small file
    assert set(files["dvc.yaml"]) == {"index"}
    assert set(files["pipelines/params/dvc.yaml"]) == {"params"} and set(files["pipelines/code/dvc.yaml"]) == {"code"}
    assert set(files["pipelines/cmml/dvc.yaml"]) == {"cmml-aggregate", "cmml-report"}
    assert set(files["pipelines/robust/dvc.yaml"]) == {"robust-report"}
    if "micl" in params:
        assert set(files["pipelines/micl/dvc.yaml"]) == {"micl-prepare", "micl-aggregate", "micl-report"}


def test_plan_is_a_dag_in_topological_order_with_unique_names(stages) -> None:
    names = [s.name for s in stages]
    assert len(names) == len(set(names)) == len({s.dvc_name for s in stages}) == len({s.rule_name for s in stages})
    produced: set[str] = set()
    for s in stages:
        for d in s.all_deps:
            if s.name == "code":
                assert (ROOT / d).is_file() and d.startswith("src/cmml/"), f"{s.name}: dep {d} is not a source file"
            elif (s.name, d) != ("params", "params.yaml"):  # the params stage reads the params file as a whole
                assert d in produced, f"{s.name}: dep {d} not produced upstream"
        produced.update(s.outs)


def test_critical_depths_put_long_chains_first(stages) -> None:
    """Snakemake's priorities: a stage is deeper than everything it feeds, a task chain counts down."""
    depth = critical_depths(stages)
    producer = {o: s.name for s in stages for o in s.outs}
    for s in stages:
        for d in s.all_deps:
            if d in producer:
                assert depth[producer[d]] > depth[s.name], (producer[d], s.name)
    train = depth["cmml/run/both70/rebq/seed0"]
    assert depth["cmml/aggregate"] == train - 1 and depth["index"] == 1
    assert depth["data/pretrain/seed0"] > train
    text = (ROOT / "workflow/rules/stages.smk").read_text()
    assert "priority: PRIORITY[_stage.name]" in text and "critical_depths(STAGES)" in (ROOT / "workflow/rules/common.smk").read_text()


def test_task_chain_per_seed_backbone_and_param_keys(stages) -> None:
    by = {s.name: s for s in stages}
    t1 = by["cmml/run/both70/finetune_head/seed1"]
    params = load(ROOT / "params.yaml")
    T = params["tasks"]["num_tasks"]
    run = "runs/cmml/embedded/both70/finetune_head/seed1"
    assert t1.outs == t1.dir_outs == [f"{run}/ckpt", f"{run}/eval"] and t1.args["task_ids"] == list(range(T))
    assert t1.args["rows"] == [-1, *range(T)] and t1.sidecar == f"{run}/run.prov.json"
    assert "runs/data/embedded/backbone/seed1" in t1.deps and "runs/data/embedded/missing/both70/seed1" in t1.deps
    assert "cmml.methods.finetune_head" in t1.params and not any("finetune_full" in p for p in t1.params)
    assert t1.code_file == "runs/code/families-cmml-train+methods-finetune.json"
    joint = by["cmml/run/both70/joint/seed0"]
    assert joint.args["task_ids"] == joint.args["rows"] == [T - 1]
    assert "runtime.eval_batch_size" in t1.params and not any(n.startswith("cmml/evaluate/") for n in by)
    assert sorted(n for n in by if n.startswith("data/pretrain/")) == [f"data/pretrain/seed{k}" for k in (0, 1, 2)]
    doc = yaml.safe_load((ROOT / "pipelines/cmml/dvc.yaml").read_text())
    assert doc["stages"]["cmml-aggregate"]["metrics"] == ["results/cmml/metrics.json"]
    run_file = yaml.safe_load((ROOT / "pipelines/cmml/both70/rebq/seed2/dvc.yaml").read_text())
    assert run_file["stages"]["cmml-run-both70-rebq-seed2"]["outs"] == [
        "runs/cmml/embedded/both70/rebq/seed2/ckpt", "runs/cmml/embedded/both70/rebq/seed2/eval",
        "runs/cmml/embedded/both70/rebq/seed2/run.prov.json"]


def bytecode_closure(entries: tuple[str, ...]) -> set[str]:
    """cmml modules reachable from ``entries`` by scanning bytecode (an implementation independent of ours)."""
    finder = modulefinder.ModuleFinder(path=[str(sources.PKG_DIR.parent)])
    for e in entries:
        finder.run_script(str(sources.module_file(e)))
    found = {m for m in finder.modules if m == "cmml" or m.startswith("cmml.")}
    packages = {".".join(e.split(".")[:i]) for e in entries for i in range(1, e.count(".") + 1)}
    return found | set(entries) | packages  # a script run of an entry does not import its own packages


def type_checking_only(module: str) -> set[str]:
    """Modules ``module`` names only inside ``if TYPE_CHECKING:`` (bytecode holds them, we skip them)."""
    import ast

    tree = ast.parse(sources.module_file(module).read_text())
    guarded: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and sources._is_type_checking(node):
            for sub in ast.walk(node):
                if isinstance(sub, ast.ImportFrom) and sub.module:
                    guarded |= {sub.module, *(f"{sub.module}.{a.name}" for a in sub.names)}
    return guarded


def test_code_deps_equal_the_import_closure(stages) -> None:
    code = next(s for s in stages if s.name == "code")
    groups = {s.code_file: s.code_entries for s in stages if s.code_file}
    assert code.outs == sorted(groups) and code.args["files"] == {f: list(e) for f, e in sorted(groups.items())}
    assert code.deps == sorted({sources.rel_path(m) for e in groups.values() for m in sources.closure(e)})
    for f, entries in groups.items():
        ours = set(sources.closure(entries))
        scanned = bytecode_closure(entries)
        assert ours <= scanned, f"{f}: {sorted(ours - scanned)} not found by the bytecode scan"
        extra = scanned - ours
        guarded = set().union(*(type_checking_only(m) for m in ours))
        assert extra <= guarded, f"{f}: imported but missing from the closure: {sorted(extra - guarded)}"


def edited_fingerprints(tmp_path: Path, monkeypatch, rel: str, edit) -> dict[str, bool]:
    """{fingerprint file: changed} after applying ``edit`` to a copy of src/cmml/``rel``."""
    groups = {s.code_file: s.code_entries for s in plan(load(ROOT / "params.yaml")) if s.code_file}
    before = {f: sources.fingerprint_text(e) for f, e in groups.items()}
    copy = tmp_path / "cmml"
    shutil.copytree(sources.PKG_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / rel
    target.write_text(edit(target.read_text()))
    monkeypatch.setattr(sources, "PKG_DIR", copy)
    sources.clear_caches()
    try:
        return {f: sources.fingerprint_text(e) != before[f] for f, e in groups.items()}
    finally:
        sources.clear_caches()
    

def test_editing_missing_py_reruns_exactly_its_users(tmp_path: Path, monkeypatch) -> None:
    changed = edited_fingerprints(tmp_path, monkeypatch, "data/missing.py", lambda t: t + "\nLIMIT = 1\n")
    hit = {Path(f).stem for f, c in changed.items() if c}
    assert "data-missing" in hit and "models-pretrain" in hit
    assert {"families-cmml-train+methods-rebq", "families-cmml-train+methods-finetune"} <= hit
    assert not hit & {"data-prepare", "data-tasks", "families-cmml-aggregate", "families-cmml-report", "report-index"}


def test_editing_the_report_reruns_only_the_report(tmp_path: Path, monkeypatch) -> None:
    changed = edited_fingerprints(tmp_path, monkeypatch, "families/cmml/report.py", lambda t: t + "\nWIDTH = 3\n")
    assert {Path(f).stem for f, c in changed.items() if c} == {"families-cmml-report"}


@pytest.mark.parametrize("rel", ["cli.py", "config.py", "pipeline/plan.py", "methods/rebq.py"])
def test_docstring_edits_rerun_nothing(tmp_path: Path, monkeypatch, rel: str) -> None:
    changed = edited_fingerprints(tmp_path, monkeypatch, rel, lambda t: t.replace('"""', '"""Edited. ', 1))
    assert not any(changed.values())


def test_no_import_cycles() -> None:
    graph = {m: set(sources._analysis(m)[0]) - {m} for m in sources.all_modules()}
    state: dict[str, int] = {}
    path: list[str] = []
    cycles: list[list[str]] = []

    def visit(u: str) -> None:
        state[u] = 1
        path.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                cycles.append(path[path.index(v):] + [v])
            elif v not in state:
                visit(v)
        path.pop()
        state[u] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, f"import cycles: {cycles}"
    assert not any(m.startswith("cmml") for m in graph["cmml.pipeline.worker"]), "the worker must import nothing of cmml"
    assert not any(m.startswith("cmml.") and m != "cmml.errors" for m in graph["cmml.config"]), "config must be a leaf"


def test_module_analyses_are_cached_by_file_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`.cmml/sources.json` spares each Snakemake parse the AST work; a record is used only while
    the file's bytes still have its sha256."""
    monkeypatch.chdir(tmp_path)
    sources.clear_caches()
    try:
        fresh = {m: sources._analysis(m) for m in ("cmml.cli", "cmml.config")}
        sources.save_cache()
        data = json.loads(sources.CACHE_FILE.read_text())
        assert data["cmml.config"]["fingerprint"] == fresh["cmml.config"][1]
        data["cmml.cli"]["fingerprint"] = "from-the-cache"  # bytes unchanged: the record is trusted
        data["cmml.config"].update(sha256="0" * 64, fingerprint="stale")  # bytes differ: re-analysed
        sources.CACHE_FILE.write_text(json.dumps(data))
        sources.clear_caches()
        assert sources.fingerprint("cmml.cli") == "from-the-cache"
        assert sources.fingerprint("cmml.config") == fresh["cmml.config"][1]
        assert sources._analysis("cmml.config")[0] == fresh["cmml.config"][0]
    finally:
        sources.clear_caches()


def test_dvc_yaml_check_is_remembered_until_an_input_changes(tmp_path: Path, monkeypatch) -> None:
    """The stage CLI checks the dvc.yaml files under DVC; a passed check is skipped until params change."""
    from cmml.errors import ConfigError
    from cmml.pipeline.dvcgen import CHECKED, check_current

    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / "params.yaml", "params.yaml")
    for path, text in expected("params.yaml").items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
    check_current("params.yaml")
    digest = Path(CHECKED).read_text()
    check_current("params.yaml")  # remembered: same inputs
    assert Path(CHECKED).read_text() == digest
    p = yaml.safe_load(Path("params.yaml").read_text())
    p["cmml"]["experiments"]["main"]["seeds"] = [0, 1]  # the DAG's shape changes
    Path("params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    with pytest.raises(ConfigError, match="out of date with params.yaml"):
        check_current("params.yaml")


def test_params_stage_command_changes_with_the_files_it_writes(tmp_path: Path, monkeypatch) -> None:
    """Both tools rerun a stage whose command changed: the params stage's carries the digest of its plan."""
    from dataclasses import replace

    from cmml.cli import main
    from cmml.pipeline.stage import PARAMS_STAGE

    p = load(ROOT / "params.yaml")
    first = next(s for s in plan(p) if s.name == PARAMS_STAGE)
    assert first.cmd[-2:] == ["--plan", first.args_digest]
    other = replace(first, args={**first.args, "files": {**first.args["files"], "runs/params/new.json": ["data"]}})
    assert other.cmd != first.cmd  # a stage added by code (or a key a stage reads) changes the command
    p["cmml"]["experiments"]["main"]["seeds"] = [0]
    assert next(s for s in plan(p) if s.name == PARAMS_STAGE).cmd != first.cmd
    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / "params.yaml", "params.yaml")
    assert main(["run", PARAMS_STAGE, "--plan", "0" * 12]) == 2  # a command generated for another plan
    assert not Path("runs/params").exists()
