"""The robust family: params checks, its stages in Snakemake's and DVC's view, a tiny end-to-end run of
every stage through the stage CLI (complete, adapters, dedicated, dropout; both fills; report) beside a
cmml run, and an edit of one robust model's hyper-parameter making only that model's stages, the
evaluation, the report and the index stale."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from small import ROOT, small_params
from cmml.cli import main
from cmml.errors import ConfigError
from cmml.pipeline.dvcgen import render
from cmml.pipeline.plan import plan, validate_families
from cmml.pipeline.status import states
from cmml.report.compare import compare

KINDS = ("complete", "ssf", "lora", "bitfit", "dedicated", "dropout")


def robust_params(seeds: list[int] = [0], with_cmml: bool = False) -> dict[str, Any]:
    """A tiny benchmark, the robust family (and one cmml run if asked), one epoch per model."""
    p = small_params(8, {"pretrain": 8, "train": 8, "val": 1, "test": 6},
                     runs={"finetune_head": {"epochs": 1}} if with_cmml else None,
                     families=("cmml", "robust") if with_cmml else ("robust",))
    p["robust"]["seeds"] = seeds
    p["robust"]["missing_rates"] = [0.0, 0.5, 1.0]
    p["robust"]["models"] = {n: {**b, "epochs": 1, "batch_size": 16} for n, b in p["robust"]["models"].items()}
    return p


@pytest.mark.parametrize("name", ["params.yaml", "presets/robust_full.yaml"])
def test_default_and_full_params_hold_every_kind_and_are_valid(name: str) -> None:
    p = yaml.safe_load((ROOT / name).read_text())
    assert {b["kind"] for b in p["robust"]["models"].values()} == set(KINDS)
    validate_families(p, name)


@pytest.mark.parametrize(("path", "value", "match"), [
    (("robust", "fills"), ["zeros", "ones"], "robust.fills"),
    (("robust", "settings"), ["nope"], "robust.settings"),
    (("robust", "missing_rates"), [1.5], "robust.missing_rates"),
    (("robust", "models", "ssf", "start"), "ssf", "robust.models.ssf.start"),
    (("robust", "models", "ssf", "init"), "gauss", "robust.models.ssf.init"),
    (("robust", "models", "lora", "targets"), ["qkv"], "robust.models.lora.targets"),
    (("robust", "models", "dropout", "p"), 0.0, "robust.models.dropout.p"),
    (("robust", "models", "bitfit", "rank"), 2, "robust.models.bitfit.rank"),
])
def test_bad_values_name_the_key(path: tuple[str, ...], value: Any, match: str) -> None:
    p = robust_params()
    node = p
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    with pytest.raises(ConfigError, match=match.replace(".", r"\.")):
        validate_families(p, "params.yaml")


def test_plan_in_snakemake_and_dvc_and_params_scoping(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    p = robust_params([0, 1])
    stages = plan(p)
    mine = [s for s in stages if s.family == "robust"]
    names = {s.name for s in mine}
    assert {"robust/train/complete_full/seed1", "robust/train/ssf/seed0", "robust/evaluate/seed0", "robust/evaluate/seed1",
            "robust/report"} <= names
    dvc = {n for text in render(stages).values() for n in yaml.safe_load(text)["stages"]}
    assert {s.dvc_name for s in mine} <= dvc
    # a robust model's key is read by its stages, the evaluation and the report only (and the params stage,
    # which splits params.yaml for DVC): never by another family's stages
    ssf_key = [s.name for s in stages if s.name != "params" and any(k == "robust.models.ssf" or k.startswith("robust.models.ssf.")
                                             or k in ("robust", "robust.models") for k in s.params)]
    assert ssf_key and all(n.startswith("robust/") for n in ssf_key)
    assert {n for n in ssf_key if "/train/" in n} == {f"robust/train/ssf/seed{k}" for k in (0, 1)}
    ssf = next(s for s in stages if s.name == "robust/train/ssf/seed0")
    assert "runs/robust/embedded/seed0/complete_full/ckpt" in ssf.deps


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("robust")
    (root / "params.yaml").write_text(yaml.safe_dump(robust_params(with_cmml=True), sort_keys=False))
    for item in ("Snakefile", "workflow"):
        shutil.copytree(ROOT / item, root / item) if (ROOT / item).is_dir() else shutil.copy2(ROOT / item, root / item)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("CMML_WORKER", "0")
        p = yaml.safe_load(Path("params.yaml").read_text())
        for s in plan(p):
            assert main(["run", s.name]) == 0, s.name
    return root


def test_snakemake_lists_the_family_and_only_its_stages_go_stale(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project)
    p = yaml.safe_load(Path("params.yaml").read_text())
    stages = plan(p)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "CMML_WORKER": "0"}
    out = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "--list-rules"], capture_output=True,
                         text=True, env=env, check=True).stdout.split()
    assert {s.rule_name for s in stages if s.family == "robust"} <= set(out)
    assert set(states(stages, p).values()) == {"done"}
    p["robust"]["models"]["ssf"]["lr"] *= 2
    now = states(plan(p), p)
    stale = {n for n, st in now.items() if st != "done"}
    # (the params stage rewrites the small per-stage params files DVC reads; it reads every key)
    assert stale == {"params", "robust/train/ssf/seed0", "robust/evaluate/seed0", "robust/report", "index"}
    assert now["robust/train/ssf/seed0"] == "stale (params)" and now["index"] == "stale (data)"


def test_every_stage_through_the_cli(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project)
    p = yaml.safe_load(Path("params.yaml").read_text())
    metrics = json.loads(Path("results/robust/metrics.json").read_text())
    assert set(metrics) == {"_meta", *(f"{f}/{m}" for f in ("zeros", "map") for m in p["robust"]["models"])}
    zeros = {k.split("/")[1]: v for k, v in metrics.items() if k.startswith("zeros/")}
    conditions = {*(f"combinations/{c}" for c in ("image+text", "image", "text")), "settings/both70",
                  *(f"rates/{r}" for r in ("0", "0.5", "1"))}
    for m in zeros.values():
        assert {k for k, v in m.items() if isinstance(v, dict) and "mean" in v} == conditions
        assert all(math.isfinite(m[c]["mean"]) and 0 <= m[c]["mean"] <= 100 for c in conditions)
    # rate 0 is the complete test split; complete-data models are shared by both fills there
    for name, m in zeros.items():
        assert m["rates/0"]["mean"] == m["combinations/image+text"]["mean"], name
    assert zeros["complete_full"]["combinations/image+text"] == metrics["map/complete_full"]["combinations/image+text"]
    lines, differs = compare(Path("results"), Path("results"))  # the shape `cmml compare` reads
    assert differs == 0 and "[robust] metrics.json byte-identical" in lines
    counts = zeros["ssf"]["params"]
    d, layers = p["backbone"]["tiny"]["hidden_size"], p["backbone"]["tiny"]["num_layers"]
    assert counts["per_combination"]["image"] == 2 * d * (2 * layers + 2)
    assert 0 < counts["percent_of_backbone"]["image"] < 5
    page = Path("results/robust/report/index.md").read_text()
    assert "re-implementation" in page and "SSF" in page and "zeros` minus `map" in page
    assert Path("results/robust/report/curves__zeros.png").stat().st_size > 0
    assert "(robust/report/index.html)" in Path("results/index.md").read_text()  # linked from the index
    log = json.loads(Path("runs/robust/embedded/seed0/ssf/ckpt/train_log.json").read_text())
    assert set(log) == {"zeros", "map"} and set(log["map"]["train"]) == {"image+text", "image", "text"}
    assert all(v["steps"] > 0 for v in log["map"]["train"].values())
    assert set(json.loads(Path("runs/robust/embedded/seed0/complete_full/ckpt/train_log.json").read_text())) == {"any"}
