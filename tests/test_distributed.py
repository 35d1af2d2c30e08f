"""A train stage run as two data-parallel processes (torchrun, gloo on CPU) through the real stage
CLI ends with the checkpoint and train log one process writes, up to float tolerance; the batch
size leaves uneven shares and an empty one in the last batch of every epoch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from small import small_params
from cmml.cli import main
from cmml.errors import ConfigError
from cmml.pipeline.plan import find, load, plan

STAGE = "cmml/run/both70/finetune_full/seed0"
OUT = Path("runs/cmml/embedded/both70/finetune_full/seed0/ckpt/task1")
SIDECAR = Path("runs/cmml/embedded/both70/finetune_full/seed0/run.prov.json")


def set_nproc(n: int) -> None:
    p = yaml.safe_load(Path("params.yaml").read_text())
    p["runtime"]["nproc_per_stage"] = n
    Path("params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))


def run_cli() -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CMML_WORKER": "0"}
    return subprocess.run([sys.executable, "-m", "cmml", "run", STAGE], env=env, capture_output=True, text=True)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    # 40 samples in batches of 13: shares 7/6 and, in the last batch of 1 sample, 1/0
    p = small_params(4, {"pretrain": 4, "train": 20, "val": 1, "test": 2},
                     runs={"finetune_full": {"epochs": 3, "batch_size": 13}})
    (root / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("CMML_WORKER", "0")
        for st in plan(p):
            if st.name.startswith(("code", "data/")):
                assert main(["run", st.name]) == 0, st.name
    return root


def test_two_processes_train_like_one(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project)
    set_nproc(1)
    one = run_cli()
    assert one.returncode == 0, one.stderr[-2000:]
    single = torch.load(OUT / "checkpoint.pt", weights_only=True)["state"]
    single_log = json.loads((OUT / "train_log.json").read_text())
    assert "distributed" not in json.loads(SIDECAR.read_text())["extra"]

    set_nproc(2)
    two = run_cli()
    assert two.returncode == 0, two.stderr[-2000:]
    assert two.stderr.count("epoch 3/3") == 2, "only rank 0 prints (once per task)"
    ddp = torch.load(OUT / "checkpoint.pt", weights_only=True)["state"]
    ddp_log = json.loads((OUT / "train_log.json").read_text())
    side = json.loads(SIDECAR.read_text())
    assert side["extra"]["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert side["params"]["runtime.nproc_per_stage"] == 2
    assert not any(Path(".cmml/resume").iterdir()), "resume state is removed once the outputs are committed"
    assert ddp.keys() == single.keys()
    diff = max(float((ddp[k].float() - single[k].float()).abs().max()) for k in single)
    assert diff < 1e-5, diff
    assert {k: v for k, v in ddp_log.items() if not isinstance(v, dict)} == \
        {k: v for k, v in single_log.items() if not isinstance(v, dict)}
    for epoch in ("first_epoch", "last_epoch"):
        assert ddp_log[epoch].keys() == single_log[epoch].keys()
        assert all(abs(ddp_log[epoch][k] - v) < 1e-5 for k, v in single_log[epoch].items())


def test_rank_count_must_match_the_param(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cmml.families.cmml.train import run

    monkeypatch.chdir(project)
    set_nproc(2)
    params = load("params.yaml")
    with pytest.raises(ConfigError, match="runtime.nproc_per_stage' is 2, but this process is one of 1"):
        run(find(plan(params), STAGE), params)
