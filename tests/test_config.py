"""Bad params.yaml: one clear error naming the file and key, non-zero exit, nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cmml.config import load_params, method_block, runs
from cmml.errors import ConfigError
from cmml.methods.registry import resolve_hparams

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, edit) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    edit(params)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def test_default_params_are_valid() -> None:
    params = load_params(ROOT / "params.yaml")
    assert runs(params)
    for run in params["methods"]:
        resolve_hparams(params, run)


@pytest.mark.parametrize("edit, needle", [
    (lambda p: p["methods"]["finetune_head"].update(method="nosuch"), "methods.finetune_head.method' names unknown method 'nosuch'"),
    (lambda p: p["settings"]["both70"]["train"].update(ratio=1.5), "settings.both70.train.ratio' must be a ratio in [0, 1], got 1.5"),
    (lambda p: p["settings"]["both70"]["test"].update(type="audio"), "settings.both70.test.type' must be one of"),
    (lambda p: p["tasks"].pop("num_tasks"), "missing key 'tasks.num_tasks'"),
    (lambda p: p["tasks"].update(num_tasks="5"), "key 'tasks.num_tasks' must be int, got '5'"),
    (lambda p: p["runtime"].update(threads=True), "key 'runtime.threads' must be int"),
    (lambda p: p["experiments"]["main"].update(settings=["nosuch"]), "'experiments.main.settings' names 'nosuch'"),
    (lambda p: p["methods"]["finetune_full"].update(base="finetune_full"), "forms a cycle"),
])
def test_bad_params_name_the_key(tmp_path: Path, edit, needle: str) -> None:
    path = write(tmp_path, edit)
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert needle in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize("edit, needle", [
    (lambda p: p["methods"]["finetune_head"].pop("lr"), "methods.finetune_head.lr' is missing"),
    (lambda p: p["methods"]["finetune_head"].update(lrr=0.1), "methods.finetune_head.lrr' is not a finetune hyper-parameter"),
    (lambda p: p["methods"]["finetune_head"].update(epochs=0), "methods.finetune_head.epochs must be positive"),
    (lambda p: p["methods"]["finetune_head"].update(train_backbone="no"), "methods.finetune_head.train_backbone' must be bool"),
    (lambda p: p["methods"]["joint"].update(mask_old_logits=True), "methods.joint.mask_old_logits must be false"),
])
def test_bad_method_hparams(tmp_path: Path, edit, needle: str) -> None:
    path = write(tmp_path, edit)
    proc = subprocess.run([sys.executable, "-m", "cmml", "check", "--params", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr and proc.stderr.count("\n") == 1


def test_base_inheritance_merges_overrides(tmp_path: Path) -> None:
    def edit(p: dict) -> None:
        p["methods"]["ft_slow"] = {"base": "finetune_head", "lr": 0.0001}
    params = load_params(write(tmp_path, edit))
    block = method_block(params, "ft_slow")
    assert block["lr"] == 0.0001 and block["method"] == "finetune" and block["epochs"] == params["methods"]["finetune_head"]["epochs"]


def test_unknown_stage_is_a_clear_error(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "cmml", "train", "--method", "nosuch", "--setting", "both70",
                           "--seed", "0", "--task", "0"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "no stage named 'train/both70/nosuch/seed0/task0'" in proc.stderr
