"""End to end through the stage CLI on real-format data: a user's CMML manifest (the shipped preset,
shrunk) and MM-IMDb's raw layout with per-film missing codes, each with a tiny locally saved ViLT
whose 8 text positions the backbone stage stretches to benchmark.max_text_len."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from realfixtures import mmimdb_raw, user_manifest, vocab

from cmml.cli import main
from cmml.models.backbone import new_vilt, tiny_config
from cmml.pipeline.plan import plan

ROOT = Path(__file__).resolve().parents[1]
TINY = {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 64, "patch_size": 8}


def tiny_model(dest: Path) -> Path:
    """A tiny ViLT with 8 text positions and its vocab, saved with save_pretrained."""
    voc = vocab(dest / "vocab.txt")
    n = len([w for w in voc.read_text().splitlines() if w])
    new_vilt(tiny_config(n, 8, 32, TINY)).save_pretrained(dest)
    return dest


def shrunk(preset: str, bench: dict[str, Any]) -> dict[str, Any]:
    """The preset with tiny sizes: 32-pixel images, 12 tokens, one epoch, the tiny model, CPU."""
    p = yaml.safe_load((ROOT / "presets" / preset).read_text())
    p["benchmark"].update({"image_size": 32, "max_text_len": 12, "vocab": "model", **bench})
    p["backbone"]["pretrained"] = "model"
    p["runtime"].update(device="cpu", threads=1, eval_batch_size=8, num_workers=1, cache_mb=4)
    rebq = p["cmml"]["methods"]["rebq"]
    rebq.update(epochs=1, batch_size=4, lr=0.003, pool_size=8, prompt_length=2, memory_layers=[0], text_layers=[0],
                image_layers=[0])
    p["cmml"]["methods"] = {"rebq": rebq}
    p["cmml"]["experiments"] = {"main": {"methods": ["rebq"], "settings": ["both70"], "seeds": [42]}}
    return p


def run_all(p: dict[str, Any]) -> None:
    Path("params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    for st in plan(p):
        assert main(["run", st.name]) == 0, st.name


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CMML_WORKER", "0")
    tiny_model(tmp_path / "model")
    return tmp_path


def test_user_manifest_preset_end_to_end(project: Path) -> None:
    user_manifest(project / "data" / "mine")
    p = shrunk("user_manifest.yaml", {"num_classes": 4, "image_size": 64})  # ViLT resize: 64x64 and 64x96 images
    run_all(p)
    man = json.loads(Path("runs/data/manifest/prepared/manifest.json").read_text())
    assert man["layout"] == "cmml_manifest" and man["splits"]["train"]["count"] == 12
    assert man["image_resize"] == "vilt"  # 64x64 and 64x96 images: batches padded with a pixel mask
    tasks = json.loads(Path("runs/data/manifest/tasks/tasks.json").read_text())
    assert tasks["class_order"] == [1, 3, 0, 2] and tasks["offsets"] == [0, 2, 4]
    assert tasks["class_names"] == ["dog", "soup", "cat", "cake"]
    side = json.loads(Path("runs/data/backbones/model.prov.json").read_text())
    assert side["extra"]["text_positions"] == {"pretrained": 8, "interpolated_to": 12}
    prep = json.loads(Path("runs/data/manifest/prepared.prov.json").read_text())
    assert "data/mine/manifest.json" in prep["inputs"]  # the user's files are the prepare stage's deps
    scores = json.loads(Path("runs/cmml/manifest/both70/rebq/seed42/eval/scores.json").read_text())
    assert scores["metric"] == "accuracy" and len(scores["rows"]["task1"]["accuracy"]) == 2
    metrics = json.loads(Path("results/cmml/metrics.json").read_text())
    assert metrics  # the aggregate and report stages ran on the real-format benchmark


def test_mmimdb_raw_end_to_end_with_film_codes(project: Path) -> None:
    mmimdb_raw(project / "data" / "mmimdb")
    p = shrunk("rebq_mmimdb.yaml", {"num_genres": 8, "num_classes": 8, "plots": "each"})
    p["tasks"]["num_tasks"] = 2
    p["benchmark"]["on_bad_sample"] = "skip"
    run_all(p)
    man = json.loads(Path("runs/data/mmimdb/prepared/manifest.json").read_text())
    assert man["grouped"] and man["skipped"]["train"]["total"] == 1  # the Film-Noir-only film
    import pyarrow.parquet as pq

    groups = pq.read_table("runs/data/mmimdb/prepared/train.parquet", columns=["sample_id", "group"]).to_pylist()
    group_of = {r["sample_id"]: r["group"] for r in groups}
    missing = Path("runs/data/mmimdb/missing/both70/seed42")
    for table in json.loads((missing / "index.json").read_text())["tables"]:
        rows = [line.split(",") for line in (missing / table["file"]).read_text().splitlines()[1:]]
        codes: dict[str, set[str]] = {}
        for sid, code in rows:
            codes.setdefault(group_of.get(sid, sid), set()).add(code)
        assert all(len(c) == 1 for c in codes.values()), table["file"]  # one code per film
    scores = json.loads(Path("runs/cmml/mmimdb/both70/rebq/seed42/eval/scores.json").read_text())
    assert scores["metric"] == "f1_macro" and set(scores["rows"]["task0"]) >= {"f1_samples", "f1_weighted"}


@pytest.mark.parametrize("preset", sorted(p.name for p in (ROOT / "presets").glob("*.yaml")))
def test_presets_are_complete_valid_params_files(preset: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Every preset passes `cmml check` (shared sections, benchmark keys, every run's hyper-parameters)."""
    assert main(["check", "--params", str(ROOT / "presets" / preset)]) == 0
    assert "valid" in capsys.readouterr().out
