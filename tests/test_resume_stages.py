"""The pretraining stage and the robust family's train stages resume after a crash: each fit saves
its state after every epoch outside the declared outputs, and the rerun writes the bytes an
uninterrupted run writes. (The cmml and micl train stages are killed with SIGKILL in
test_resume.py and test_micl_pipeline.py; here the crash is raised right after a save, in process.)"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from small import small_params
from cmml.cli import main
from cmml.pipeline.plan import find, plan
from cmml.train.resume import ResumeFile


class Crash(BaseException):
    """Stands for a kill: nothing below the stage handles it."""


@contextmanager
def crash_after_saves(n: int) -> Iterator[None]:
    """Raise :class:`Crash` right after the ``n``-th resume state of the process is written."""
    real, count = ResumeFile.save, [0]

    def save(self: ResumeFile, state: dict[str, Any]) -> None:
        real(self, state)
        count[0] += 1
        if count[0] == n:
            raise Crash

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ResumeFile, "save", save)
        yield


def setup(p: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, upto: tuple[str, ...]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CMML_WORKER", "0")
    Path("params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    for st in plan(p):
        if st.name.startswith(("code", "data/prepare", "data/tasks", *upto)):
            assert main(["run", st.name]) == 0, st.name


def files(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def crash_resume_fresh(stage: str, out: Path, crash_at: int, capsys: pytest.CaptureFixture[str]) -> tuple[str, dict, dict]:
    """Crash ``stage`` after its ``crash_at``-th save, rerun it, then run it again from scratch:
    (the rerun's stderr, the resumed output's files, the uninterrupted output's files)."""
    with crash_after_saves(crash_at), pytest.raises(Crash):
        main(["run", stage])
    assert not out.exists() and list(Path(".cmml/resume").glob("*.pt"))
    capsys.readouterr()
    assert main(["run", stage]) == 0
    err = capsys.readouterr().err
    assert not list(Path(".cmml/resume").glob("*.pt")), "the resume state is removed once the outputs are committed"
    resumed = files(out)
    shutil.rmtree(out)
    assert main(["run", stage]) == 0
    assert "resuming" not in capsys.readouterr().err
    return err, resumed, files(out)


def test_pretraining_resumes_to_the_same_backbone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    p = small_params(4, {"pretrain": 6, "train": 2, "val": 1, "test": 1}, runs={"finetune_head": {"epochs": 1}})
    p["pretrain"]["epochs"] = 4
    setup(p, tmp_path, monkeypatch, ())
    err, resumed, fresh = crash_resume_fresh("data/pretrain/seed0", Path("runs/data/embedded/backbone/seed0"), 2, capsys)
    assert "data/pretrain/seed0: resuming after epoch 2/4" in err
    assert "model.safetensors" in fresh and resumed == fresh


def test_robust_adapter_stage_resumes_its_fits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    p = small_params(8, {"pretrain": 8, "train": 8, "val": 1, "test": 2}, families=("robust",))
    r = p["robust"]
    r.update(seeds=[0], fills=["zeros"])
    r["models"] = {"complete_full": {**r["models"]["complete_full"], "epochs": 1},
                   "ssf": {**r["models"]["ssf"], "epochs": 3, "batch_size": 16}}
    setup(p, tmp_path, monkeypatch, ("data/pretrain/seed0", "robust/train/complete_full/seed0"))
    # 3 epochs per fit save after epochs 1 and 2: the 3rd save is the second combination's first epoch
    stage = find(plan(p), "robust/train/ssf/seed0")
    err, resumed, fresh = crash_resume_fresh(stage.name, Path(stage.args["out"]), 3, capsys)
    assert err.count("resuming after epoch 2/3") == 1 and err.count("resuming after epoch 1/3") == 1
    assert resumed == fresh and len(fresh) >= 2
