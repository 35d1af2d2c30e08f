"""Cluster readiness: `snakemake --lint` is clean, and the SLURM and Kubernetes workflow profiles
dry-run the DAG with a GPU request on every model stage and on no bookkeeping stage (Kubernetes
with its storage provider pointed at a local directory standing in for the bucket)."""

from __future__ import annotations

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


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cluster")
    shutil.copy2(ROOT / "Snakefile", root / "Snakefile")
    for item in ("workflow", "src"):
        shutil.copytree(ROOT / item, root / item, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    keep_families(p)  # the cmml family only
    p["cmml"]["experiments"] = {"main": {"methods": ["finetune_head", "joint"], "settings": ["both70"], "seeds": [0]}}
    (root / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    return root


def smk(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(root), "PYTHONPATH": str(root / "src")}
    return subprocess.run(["snakemake", *args], cwd=root, env=env, capture_output=True, text=True)


def test_lint_is_clean(project: Path) -> None:
    proc = smk(project, "--lint")
    assert proc.returncode == 0 and "Congratulations" in proc.stdout + proc.stderr, proc.stdout[-3000:]


def resources(out: str) -> tuple[dict[str, str], list[str]]:
    """{rule: its resources line} of a dry run, and the model stages among them."""
    jobs = re.findall(r"^(localrule|rule) (\S+):\n(?:.*\n)*?    resources: (.*)$", out, re.M)
    assert jobs, out[-2000:]
    res = {name: r for _, name, r in jobs}
    return res, [n for n in res if n.startswith(("cmml_run_", "data_pretrain_"))]


def test_slurm_profile_dry_run(project: Path) -> None:
    proc = smk(project, "-n", "--workflow-profile", "workflow/profiles/slurm")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    res, model = resources(out)  # model stages: the backbone's pretraining and each run's stage
    assert len(model) == 3 and all(res[n].endswith("gpu=1") and "slurm_partition=gpu" in res[n] for n in model)
    assert all(res[n].endswith("gpu=0") for n in res if n not in model and n != "all")


def test_kubernetes_profile_dry_run(project: Path, tmp_path: Path) -> None:
    """The profile's S3 storage replaced by the fs provider on a local directory, into which the
    sources were uploaded as README tells users to upload them to their bucket."""
    store = tmp_path / "bucket"
    shutil.copytree(project / "src", store / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(project / "params.yaml", store / "params.yaml")
    proc = smk(project, "-n", "--workflow-profile", "workflow/profiles/kubernetes",
               "--default-storage-provider", "fs", "--default-storage-prefix", str(store))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert f"{store}/src/cmml/config.py (retrieve from storage)" in out
    res, model = resources(out)
    assert len(model) == 3 and all(res[n].endswith("gpu=1") and "gpu_manufacturer=nvidia" in res[n] for n in model)
    assert all(res[n].endswith("gpu=0") for n in res if n not in model and n != "all")
