"""End to end: a minimal params file through Snakemake and through DVC in temp copies of the
project; a second run executes nothing; a method hyper-parameter edit reruns only that
method's stages (and aggregate/report); both tools write the same results; `cmml audit`
passes, then fails naming the file after one byte of an intermediate is altered."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.e2e


def minimal_params() -> dict:
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["benchmark"].update(num_classes=8, per_class={"pretrain": 12, "train": 12, "val": 2, "test": 8})
    p["tasks"]["num_tasks"] = 2
    p["pretrain"].update(epochs=2)
    p["runtime"]["threads"] = 1
    p["settings"] = {"both70": p["settings"]["both70"]}
    keep = {"finetune_head", "joint"}
    p["methods"] = {k: {**v, "epochs": 1} for k, v in p["methods"].items() if k in keep}
    p["experiments"] = {"main": {"methods": sorted(keep), "settings": ["both70"], "seeds": [0]}}
    return p


def sh(cmd: list[str], cwd: Path, check: bool = True, worker: bool = True) -> subprocess.CompletedProcess[str]:
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(cwd), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
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
    sh(["dvc", "config", "core.analytics", "false"], dest)
    sh(["cmml", "dvc-yaml"], dest)
    sh(["git", "add", "-A"], dest)
    sh(["git", "commit", "-qm", "init"], dest)
    return dest


def edit_lr(project: Path) -> None:
    p = yaml.safe_load((project / "params.yaml").read_text())
    p["methods"]["finetune_head"]["lr"] *= 2
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
    return set(re.findall(r"^Shell command: (python -m cmml .*)$", sh(["snakemake", "-n", "-p", "--cores", "1"], project).stdout, re.M))


def dvc_dry_commands(project: Path) -> set[str]:
    return set(re.findall(r"^> (python -m cmml .*)$", sh(["dvc", "repro", "--dry"], project).stdout, re.M))


@pytest.fixture(scope="module")
def projects(tmp_path_factory) -> tuple[Path, Path, dict[str, set[str]]]:
    base = tmp_path_factory.mktemp("e2e")
    params = minimal_params()
    return make_project(base / "smk", params), make_project(base / "dvc", params), {}


def test_snakemake_run_rerun_edit_audit(projects) -> None:
    smk, _, seen = projects
    sh(["snakemake", "--cores", "2"], smk)
    assert (smk / "results/metrics.json").is_file() and (smk / "results/report/index.md").is_file()
    # model stages after the first ran in the warm worker (the DVC project runs without it)
    sidecars = [json.loads(p.read_text()) for p in smk.glob("runs/embedded/both70/*/seed0/*/*/prov.json")]
    assert sum(s["env"]["via_worker"] for s in sidecars) >= len(sidecars) - 2, [s["env"]["via_worker"] for s in sidecars]
    assert snakemake_jobs(smk) == {}
    edit_lr(smk)
    jobs = snakemake_jobs(smk)
    assert set(jobs) == {"all", "aggregate", "report", "train_both70_finetune_head_seed0_task0",
                         "train_both70_finetune_head_seed0_task1", "evaluate_both70_finetune_head_seed0_init",
                         "evaluate_both70_finetune_head_seed0_task0",
                         "evaluate_both70_finetune_head_seed0_task1"}, jobs
    seen["smk_after_edit"] = smk_dry_commands(smk)
    sh(["snakemake", "--cores", "2"], smk)
    assert snakemake_jobs(smk) == {}
    audit = sh(["cmml", "audit", "results/metrics.json"], smk)
    assert "prepare" in audit.stdout and "BROKEN" not in audit.stdout
    table = next((smk / "runs/embedded/missing/both70/seed0").glob("*_task1_test_*.csv"))
    raw = bytearray(table.read_bytes())
    raw[-2] = ord("1") if raw[-2] != ord("1") else ord("2")
    table.write_bytes(bytes(raw))
    bad = sh(["cmml", "audit", "results/metrics.json"], smk, check=False)
    assert bad.returncode == 1 and table.name in bad.stderr


def test_dvc_run_rerun_edit_and_same_results(projects) -> None:
    smk, dvc, seen = projects
    sh(["dvc", "repro"], dvc, worker=False)
    again = sh(["dvc", "repro"], dvc).stdout
    assert "Running stage" not in again
    assert "up to date" in sh(["dvc", "status"], dvc).stdout
    edit_lr(dvc)
    changed = set(json.loads(sh(["dvc", "status", "--json"], dvc).stdout))
    assert changed == {"train-both70-finetune_head-seed0-task0", "train-both70-finetune_head-seed0-task1",
                       "evaluate-both70-finetune_head-seed0-init",
                       "evaluate-both70-finetune_head-seed0-task0", "evaluate-both70-finetune_head-seed0-task1",
                       "aggregate"}, changed
    # the two tools plan the same commands after the edit (DVC's dry run cannot foresee that
    # aggregate's outputs will change, so it omits the report stage that Snakemake lists)
    dvc_cmds = dvc_dry_commands(dvc)
    assert dvc_cmds == seen["smk_after_edit"] - {"python -m cmml report"}, (dvc_cmds, seen["smk_after_edit"])
    ran = set(re.findall(r"Running stage '([^']+)'", sh(["dvc", "repro"], dvc).stdout))
    assert ran == changed | {"report"}, ran
    assert "Running stage" not in sh(["dvc", "repro"], dvc).stdout
    # Both tools ran the same commands on the same params (lr edited in both): same numbers.
    assert (dvc / "results/metrics.json").read_text() == (smk / "results/metrics.json").read_text()
    assert sh(["cmml", "audit", "results/metrics.json"], dvc).returncode == 0


def test_dvc_stops_on_a_stale_dvc_yaml(projects) -> None:
    _, dvc, _ = projects
    p = yaml.safe_load((dvc / "params.yaml").read_text())
    p["experiments"]["main"]["seeds"] = [0, 1]
    (dvc / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    proc = sh(["dvc", "repro"], dvc, check=False)
    assert proc.returncode != 0 and "run `cmml dvc-yaml`" in proc.stdout + proc.stderr
