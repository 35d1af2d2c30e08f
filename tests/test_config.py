"""Bad params.yaml: one clear error naming the file and key, non-zero exit, nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cmml.errors import ConfigError
from cmml.families.cmml.plan import check_hparams
from cmml.families.cmml.runs import method_block, runs
from cmml.pipeline.plan import load

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, edit) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    edit(params)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def test_default_params_are_valid() -> None:
    params = load(ROOT / "params.yaml")
    assert runs(params)
    check_hparams(params, "params.yaml")


@pytest.mark.parametrize("edit, needle", [
    (lambda p: p["cmml"]["methods"]["finetune_head"].update(method="nosuch"),
     "cmml.methods.finetune_head.method' names unknown method 'nosuch'"),
    (lambda p: p["settings"]["both70"]["train"].update(ratio=1.5), "settings.both70.train.ratio' must be a ratio in [0, 1], got 1.5"),
    (lambda p: p["settings"]["both70"]["test"].update(type="audio"), "settings.both70.test.type' must be one of"),
    (lambda p: p["tasks"].pop("num_tasks"), "missing key 'tasks.num_tasks'"),
    (lambda p: p["tasks"].update(num_tasks="5"), "key 'tasks.num_tasks' must be int, got '5'"),
    (lambda p: p["runtime"].update(threads=True), "key 'runtime.threads' must be int"),
    (lambda p: p["runtime"].update(num_workers=-1), "key 'runtime.num_workers' must be a non-negative integer, got -1"),
    (lambda p: p["runtime"].pop("cache_mb"), "missing key 'runtime.cache_mb'"),
    (lambda p: p["runtime"].update(nproc_per_stage=0), "key 'runtime.nproc_per_stage' must be a positive integer, got 0"),
    (lambda p: p["runtime"].update(nproc_per_stage=2.0), "key 'runtime.nproc_per_stage' must be int"),
    (lambda p: p["data"].update(fill="noise"), "key 'data.fill' must be one of ['map', 'zeros'], got 'noise'"),
    (lambda p: p["cmml"]["experiments"]["main"].update(settings=["nosuch"]), "'cmml.experiments.main.settings' names 'nosuch'"),
    (lambda p: p["cmml"]["methods"]["finetune_full"].update(base="finetune_full"), "forms a cycle"),
    (lambda p: [p.pop(f) for f in ("cmml", "robust", "micl")], "no experiment family configured"),
])
def test_bad_params_name_the_key(tmp_path: Path, edit, needle: str) -> None:
    path = write(tmp_path, edit)
    with pytest.raises(ConfigError) as err:
        load(path)
    assert needle in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize("edit, needle", [
    (lambda p: p["cmml"]["methods"]["finetune_head"].pop("lr"), "cmml.methods.finetune_head.lr is missing"),
    (lambda p: p["cmml"]["methods"]["finetune_head"].update(lrr=0.1), "cmml.methods.finetune_head.lrr is not a finetune hyper-parameter"),
    (lambda p: p["cmml"]["methods"]["finetune_head"].update(epochs=0), "cmml.methods.finetune_head.epochs must be positive"),
    (lambda p: p["cmml"]["methods"]["finetune_head"].update(train_backbone="no"), "cmml.methods.finetune_head.train_backbone must be bool"),
    (lambda p: p["cmml"]["methods"]["finetune_head"].update(betas=[0.9]), "cmml.methods.finetune_head.betas must be two numbers"),
    (lambda p: p["cmml"]["methods"]["finetune_head"].update(bce_mean="all"), "cmml.methods.finetune_head.bce_mean must be one of"),
    (lambda p: p["cmml"]["methods"]["joint"].update(mask_old_logits=True), "cmml.methods.joint.mask_old_logits must be false"),
])
def test_bad_method_hparams(tmp_path: Path, edit, needle: str) -> None:
    path = write(tmp_path, edit)
    proc = subprocess.run([sys.executable, "-m", "cmml", "check", "--params", str(path)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr and proc.stderr.count("\n") == 1


def test_base_inheritance_merges_overrides(tmp_path: Path) -> None:
    def edit(p: dict) -> None:
        p["cmml"]["methods"]["ft_slow"] = {"base": "finetune_head", "lr": 0.0001}
    params = load(write(tmp_path, edit))
    block = method_block(params, "ft_slow")
    assert block["lr"] == 0.0001 and block["method"] == "finetune"
    assert block["epochs"] == params["cmml"]["methods"]["finetune_head"]["epochs"]


def test_unknown_stage_is_a_clear_error() -> None:
    proc = subprocess.run([sys.executable, "-m", "cmml", "run", "cmml/run/both70/nosuch/seed0"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "no stage named 'cmml/run/both70/nosuch/seed0'" in proc.stderr
