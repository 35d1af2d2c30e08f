"""``cmml status`` from the sidecars: done, then stale for the right reason, then missing."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from small import small_params
from cmml.cli import main
from cmml.pipeline.plan import plan
from cmml.pipeline.status import states



def test_status_names_params_code_data_and_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = small_params(4, {"pretrain": 4, "train": 4, "val": 1, "test": 2}, runs={"finetune_head": {"epochs": 1}})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CMML_WORKER", "0")
    Path("params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    stages = plan(p)
    assert set(states(stages, p).values()) == {"missing"}
    for st in stages:
        assert main(["run", st.name]) == 0, st.name
    assert set(states(stages, p).values()) == {"done"}
    p["cmml"]["methods"]["finetune_head"]["lr"] *= 2
    now = states(plan(p), p)
    assert now["cmml/run/both70/finetune_head/seed0"] == "stale (params)"
    assert now["data/prepare"] == "done" and now["cmml/aggregate"] == "stale (params)"
    assert now["index"] == "stale (data)"  # its input, the report, is not done any more
    p["cmml"]["methods"]["finetune_head"]["lr"] /= 2
    assert main(["run", "data/missing/both70/seed0"]) == 0  # rerun upstream: same params, new outputs
    now = states(plan(p), p)
    assert now["data/missing/both70/seed0"] == "done"  # identical bytes: nothing downstream is stale
    assert now["cmml/run/both70/finetune_head/seed0"] == "done"
    p["pretrain"]["epochs"] = 2
    now = states(plan(p), p)
    assert now["data/pretrain/seed0"] == "stale (params)"
    assert now["cmml/run/both70/finetune_head/seed0"] == "stale (data)"
    p["pretrain"]["epochs"] = 1
    Path("runs/cmml/embedded/both70/finetune_head/seed0/run.prov.json").unlink()
    assert states(plan(p), p)["cmml/run/both70/finetune_head/seed0"] == "missing"
    assert main(["status"]) == 0


def test_status_groups_every_family_of_the_default_params(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """The default params.yaml (all families) in an empty project: every group listed as missing."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    assert main(["status"]) == 0
    groups = {line.split()[0] for line in capsys.readouterr().out.splitlines() if not line.startswith(" ")}
    assert {"cmml/main", "cmml/zoo", "robust", "micl/main", "micl/ablations", "index"} <= groups


def test_params_stamp_is_newer_than_the_outputs_exactly_while_the_params_differ(tmp_path: Path) -> None:
    """Snakemake sees a params edit on a stage another tool ran last through this stamp (its input)."""
    import os

    from cmml.pipeline.stage import Stage
    from cmml.pipeline.status import params_stamps

    st = Stage(name="cmml/run/x/seed0", handler="h", args={}, deps=[], outs=["o"], params=["m.lr"], sidecar="o.prov.json")
    side = tmp_path / "o.prov.json"
    side.write_text(json.dumps({"params": {"m.lr": 0.1}}))
    os.utime(side, (1000, 1000))
    stamp = tmp_path / params_stamps([st], {"m": {"lr": 0.1}}, tmp_path)[st.name]
    assert stamp.stat().st_mtime == 0
    params_stamps([st], {"m": {"lr": 0.2}}, tmp_path)
    assert stamp.stat().st_mtime > 1000  # newer than the sidecar: Snakemake reruns the stage
    first = stamp.read_text()  # the sidecar's sha256: not the checksum Snakemake recorded at its last run
    assert first == hashlib.sha256(side.read_bytes()).hexdigest()
    params_stamps([st], {"m": {"lr": 0.1}}, tmp_path)
    assert stamp.stat().st_mtime == 0  # edited back before it reran: nothing to do
    side.write_text(json.dumps({"params": {"m.lr": 0.1}, "finished_utc": "later"}))  # another run, e.g. by DVC
    os.utime(side, (2000, 2000))
    params_stamps([st], {"m": {"lr": 0.2}}, tmp_path)
    assert stamp.stat().st_mtime > 2000 and stamp.read_text() not in ("", first)
    no_params = Stage(name="params", handler="h", args={}, deps=[], outs=["p"], params=[], sidecar="p.prov.json")
    assert params_stamps([no_params], {}, tmp_path) == {}
