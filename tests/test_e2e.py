"""End to end: a minimal params file through Snakemake and through DVC in temp copies of the
project; a second run executes nothing; a method hyper-parameter edit reruns only that
method's stages (and aggregate/report); a docstring edit reruns nothing, a code edit exactly
the stages whose import closure holds the edited module; both tools write the same results;
`cmml audit` passes, then fails naming the file after one byte of an intermediate is altered."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from small import keep_families

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.e2e


def minimal_params() -> dict:
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    keep_families(p)  # the cmml family only
    p["benchmark"].update(num_classes=8, per_class={"pretrain": 12, "train": 12, "val": 2, "test": 8})
    p["tasks"]["num_tasks"] = 2
    p["pretrain"].update(epochs=2)
    p["runtime"]["threads"] = 1
    p["settings"] = {"both70": p["settings"]["both70"]}
    keep = {"finetune_head", "joint"}
    p["cmml"]["methods"] = {k: {**v, "epochs": 1} for k, v in p["cmml"]["methods"].items() if k in keep}
    p["cmml"]["experiments"] = {"main": {"methods": sorted(keep), "settings": ["both70"], "seeds": [0]}}
    return p


def sh(cmd: list[str], cwd: Path, check: bool = True, worker: bool = True) -> subprocess.CompletedProcess[str]:
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(cwd), "PYTHONPATH": str(cwd / "src"),
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t", "DVC_NO_ANALYTICS": "1",
           "CMML_WORKER": "1" if worker else "0"}
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def make_project(dest: Path, params: dict) -> Path:
    dest.mkdir()
    for item in ("Snakefile", "workflow", "src", "pyproject.toml"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dest / item, **({"ignore": shutil.ignore_patterns("__pycache__", "*.egg-info")} if src.is_dir() else {}))
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(["git", "init", "-q"], dest)
    sh(["dvc", "init", "-q"], dest)
    shutil.copy(ROOT / ".dvcignore", dest / ".dvcignore")
    sh(["dvc", "config", "core.analytics", "false"], dest)
    sh(["cmml", "dvc-yaml"], dest)
    sh(["git", "add", "-A"], dest)
    sh(["git", "commit", "-qm", "init"], dest)
    return dest


def edit_lr(project: Path) -> None:
    p = yaml.safe_load((project / "params.yaml").read_text())
    p["cmml"]["methods"]["finetune_head"]["lr"] *= 2
    (project / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))


def snakemake_jobs(project: Path) -> dict[str, int]:
    """Rule -> job count of a dry run (empty when there is nothing to do)."""
    out = sh(["snakemake", "-n", "--cores", "2"], project).stdout
    if "Nothing to be done" in out:
        return {}
    table = out.split("Job stats:")[1].split("\n\n")[0]
    rows = [line.split() for line in table.splitlines()[3:]]
    return {r[0]: int(r[1]) for r in rows if len(r) == 2 and r[0] not in ("total",)}


def smk_dry_commands(project: Path) -> set[str]:
    out = sh(["snakemake", "-n", "-p", "--cores", "1"], project).stdout  # the rule adds `2>&1 | tee <log>`
    return set(re.findall(r"^Shell command: (python -m cmml run \S+)", out, re.M))


def dvc_dry_commands(project: Path) -> set[str]:
    return set(re.findall(r"^> (python -m cmml .*)$", sh(["dvc", "repro", "--dry"], project).stdout, re.M))


@pytest.fixture(scope="module")
def projects(tmp_path_factory) -> tuple[Path, Path, dict[str, set[str]]]:
    base = tmp_path_factory.mktemp("e2e")
    params = minimal_params()
    return make_project(base / "smk", params), make_project(base / "dvc", params), {}


FT_STAGES = ["cmml/run/both70/finetune_head/seed0"]


def rule(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_]", "_", name)


def dvc_stage(name: str) -> str:
    """DVC's name for a stage: ``<file>:<stage>`` outside the root dvc.yaml (one file per stage group and seed)."""
    short = re.sub(r"[^0-9A-Za-z_-]", "-", name.replace("/", "-"))
    parts = name.split("/")
    seed = [p for p in parts if re.fullmatch(r"seed\d+", p)]
    if parts[0] in ("code", "params", "data"):
        return "/".join(["pipelines", parts[0], *seed, "dvc.yaml"]) + f":{short}"
    if parts[0] == "cmml":
        return "/".join(["pipelines/cmml", *parts[2:4], *seed, "dvc.yaml"]) + f":{short}"
    return short


def edit_source(project: Path, rel: str, edit) -> None:
    path = project / "src/cmml" / rel
    path.write_text(edit(path.read_text()))


def test_snakemake_run_rerun_edit_audit(projects) -> None:
    smk, _, seen = projects
    sh(["snakemake", "--cores", "2"], smk)
    assert (smk / "results/cmml/metrics.json").is_file() and (smk / "results/cmml/report/index.md").is_file()
    assert (smk / "results/index.html").is_file()
    # the run ended with `cmml dvc-lock`: DVC agrees that nothing is stale, without `dvc commit`
    assert "Data and pipelines are up to date" in sh(["dvc", "status"], smk).stdout
    sidecars = {p: json.loads(p.read_text()) for p in smk.glob("runs/**/*.prov.json")}
    # model stages after the first ran in the warm worker (the DVC project runs without it)
    model = [s for s in sidecars.values() if s["name"].startswith("cmml/")]
    assert sum(s["env"]["via_worker"] for s in model) >= len(model) - 2, [s["env"]["via_worker"] for s in model]
    assert snakemake_jobs(smk) == {}
    edit_lr(smk)
    jobs = snakemake_jobs(smk)
    assert set(jobs) == {"all", "params", "cmml_aggregate", "cmml_report", "index", *map(rule, FT_STAGES)}, jobs
    seen["smk_after_edit"] = smk_dry_commands(smk)
    sh(["snakemake", "--cores", "2"], smk)
    assert snakemake_jobs(smk) == {}
    edit_source(smk, "data/missing.py", lambda t: t.replace('"""Stage', '"""Edited docstring. Stage', 1))
    assert snakemake_jobs(smk) == {}
    edit_source(smk, "families/cmml/report.py", lambda t: t + "\nEDITED = True\n")
    assert set(snakemake_jobs(smk)) == {"all", "cmml_report", "index"}
    sh(["snakemake", "--cores", "2"], smk)
    audit = sh(["cmml", "audit", "results/cmml/metrics.json"], smk)
    assert "data/prepare" in audit.stdout and "BROKEN" not in audit.stdout
    table = next((smk / "runs/data/embedded/missing/both70/seed0").glob("*_task1_test_*.csv"))
    raw = bytearray(table.read_bytes())
    raw[-2] = ord("1") if raw[-2] != ord("1") else ord("2")
    table.write_bytes(bytes(raw))
    bad = sh(["cmml", "audit", "results/cmml/metrics.json"], smk, check=False)
    assert bad.returncode == 1 and table.name in bad.stderr


def test_dvc_run_rerun_edit_and_same_results(projects) -> None:
    smk, dvc, seen = projects
    sh(["dvc", "repro"], dvc, worker=False)
    # every cmml module a stage's handler loaded is in its declared code (the import closure)
    for path in dvc.glob("runs/**/*.prov.json"):
        rec = json.loads(path.read_text())
        declared = {m.removeprefix("src/").removesuffix(".py").removesuffix("/__init__").replace("/", ".")
                    for m in rec["code"]["sources"]}
        assert rec["code"]["loaded"] and not set(rec["code"]["loaded"]) - declared, (rec["name"], rec["code"]["loaded"])
    again = sh(["dvc", "repro"], dvc).stdout
    assert "Running stage" not in again
    assert "up to date" in sh(["dvc", "status"], dvc).stdout
    edit_lr(dvc)
    # DVC reads each stage's params from its file under runs/params, which the params stage rewrites
    assert set(json.loads(sh(["dvc", "status", "--json"], dvc).stdout)) == {dvc_stage("params")}
    sh(["dvc", "repro", "--single-item", dvc_stage("params")], dvc)
    changed = set(json.loads(sh(["dvc", "status", "--json"], dvc).stdout))
    assert changed == {*map(dvc_stage, [*FT_STAGES, "cmml/aggregate"])}, changed
    # the two tools plan the same commands after the edit (DVC's dry run cannot foresee that
    # aggregate's outputs will change, so it omits the report and index stages that Snakemake lists)
    dvc_cmds = dvc_dry_commands(dvc)
    smk_cmds = {c for c in seen["smk_after_edit"] if c.split()[4] not in ("params", "cmml/report", "index")}
    assert dvc_cmds == smk_cmds, (dvc_cmds, seen["smk_after_edit"])
    ran = set(re.findall(r"Running stage '([^']+)'", sh(["dvc", "repro"], dvc).stdout))
    assert ran == changed | {dvc_stage("cmml/report"), "index"}, ran
    assert "Running stage" not in sh(["dvc", "repro"], dvc).stdout
    # Both tools ran the same commands on the same params (lr edited in both): same numbers.
    assert (dvc / "results/cmml/metrics.json").read_text() == (smk / "results/cmml/metrics.json").read_text()
    assert sh(["cmml", "audit", "results/cmml/metrics.json"], dvc).returncode == 0
    # a docstring edit reruns only the cheap code bookkeeping, whose fingerprint stays the same
    edit_source(dvc, "data/missing.py", lambda t: t.replace('"""Stage', '"""Edited docstring. Stage', 1))
    ran = set(re.findall(r"Running stage '([^']+)'", sh(["dvc", "repro"], dvc).stdout))
    assert ran == {"pipelines/code/dvc.yaml:code"}, ran
    # a code edit in the missing-table reader reruns what reads missing tables, nothing else
    edit_source(dvc, "data/missing.py", lambda t: t + "\nEDITED = True\n")
    ran = set(re.findall(r"Running stage '([^']+)'", sh(["dvc", "repro"], dvc, worker=False).stdout))
    assert {*map(dvc_stage, ["data/missing/both70/seed0", "data/pretrain/seed0"]), dvc_stage(FT_STAGES[0])} <= ran, ran
    assert not ran & {*map(dvc_stage, ["data/prepare", "data/tasks", "cmml/aggregate", "cmml/report"])}, ran


def test_dvc_stops_on_a_stale_dvc_yaml(projects) -> None:
    _, dvc, _ = projects
    original = (dvc / "params.yaml").read_text()
    p = yaml.safe_load(original)
    p["cmml"]["experiments"]["main"]["seeds"] = [0, 1]
    (dvc / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    try:
        proc = sh(["dvc", "repro"], dvc, check=False)
        assert proc.returncode != 0 and "run `cmml dvc-yaml`" in proc.stdout + proc.stderr
    finally:
        (dvc / "params.yaml").write_text(original)


def test_dvc_remote_push_then_fresh_clone_pulls_and_audits(projects, tmp_path: Path) -> None:
    """The exact artefacts travel through a DVC remote (here a local directory): push the finished
    run, clone the git repository, `dvc pull`, and the audit passes on the committed numbers."""
    _, dvc, _ = projects
    sh(["dvc", "repro"], dvc)
    (dvc / ".gitignore").write_text("/runs/\n/results/\n/logs/\n.cmml/\n")
    sh(["dvc", "remote", "add", "-d", "store", str(tmp_path / "store")], dvc)
    sh(["dvc", "push", "-q"], dvc)
    sh(["git", "add", "-A"], dvc)
    sh(["git", "commit", "-qm", "finished run"], dvc)
    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(dvc), str(clone)], tmp_path)
    assert not (clone / "results").exists()
    sh(["dvc", "pull", "-q"], clone)
    assert (clone / "results/cmml/metrics.json").read_bytes() == (dvc / "results/cmml/metrics.json").read_bytes()
    audit = sh(["cmml", "audit", "results/cmml/metrics.json"], clone)
    assert "BROKEN" not in audit.stdout + audit.stderr and "data/prepare" in audit.stdout
    assert "Data and pipelines are up to date" in sh(["dvc", "status"], clone).stdout
