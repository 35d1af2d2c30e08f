"""``backbone.source: pretrained``: a local save_pretrained directory and a hub id from the local
Hugging Face cache both become the tracked ``data/backbone`` stage; its content is a dep (local
directory) and the copied weights are what train stages load and digest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from small import keep_families
from cmml.cli import main
from cmml.models.backbone import backbone_digest, new_vilt, tiny_config
from cmml.pipeline.plan import find, plan

ROOT = Path(__file__).resolve().parents[1]


def params(ref: str) -> dict:
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    keep_families(p)  # the cmml family only
    p["benchmark"].update(num_classes=4, per_class={"pretrain": 1, "train": 4, "val": 1, "test": 2})
    p["tasks"]["num_tasks"] = 2
    p["backbone"].update(source="pretrained", pretrained=ref)
    p["runtime"].update(device="cpu", threads=1)
    p["settings"] = {"both70": p["settings"]["both70"]}
    p["cmml"]["methods"] = {"finetune_head": {**p["cmml"]["methods"]["finetune_head"], "epochs": 1}}
    p["cmml"]["experiments"] = {"main": {"methods": ["finetune_head"], "settings": ["both70"], "seeds": [0]}}
    return p


def save_model(dest: Path, vocab: Path) -> None:
    n = sum(1 for w in vocab.read_text().splitlines() if w)
    tiny = {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 64, "patch_size": 8}
    new_vilt(tiny_config(n, 32, 32, tiny)).save_pretrained(dest)
    (dest / "vocab.txt").write_text(vocab.read_text())


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CMML_WORKER", "0")
    Path("params.yaml").write_text(yaml.safe_dump(params("unused"), sort_keys=False))
    assert main(["run", "code"]) == 0 and main(["run", "data/prepare"]) == 0
    return tmp_path


def run_chain(p: dict) -> None:
    Path("params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    for st in plan(p):
        if st.name != "data/prepare" and not st.name.startswith(("cmml/aggregate", "cmml/report", "index")):
            assert main(["run", st.name]) == 0, st.name


def test_local_directory_is_a_tracked_dep(project: Path) -> None:
    model = project / "my-vilt"
    save_model(model, project / "runs/data/embedded/prepared/vocab.txt")
    p = params(str(model))
    stage = find(plan(p), "data/backbone")
    assert stage.deps == ["my-vilt"] and stage.outs == ["runs/data/backbones/" + str(model).strip("/").replace("/", "--")]
    train = find(plan(p), "cmml/run/both70/finetune_head/seed0")
    assert stage.outs[0] in train.deps and "runs/data/embedded/backbone/seed0" not in train.deps
    run_chain(p)
    assert backbone_digest(stage.outs[0]) == backbone_digest(model)
    side = json.loads(Path(f"{stage.outs[0]}.prov.json").read_text())
    assert side["extra"]["source"] == {"kind": "local", "path": str(model)}
    assert {"my-vilt/config.json", "my-vilt/model.safetensors", "my-vilt/vocab.txt"} <= set(side["inputs"])


def test_hub_id_from_the_local_cache(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = project / "hub"
    snap = cache / "models--acme--tiny-vilt" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    save_model(snap, project / "runs/data/embedded/prepared/vocab.txt")
    (cache / "models--acme--tiny-vilt" / "refs").mkdir()
    (cache / "models--acme--tiny-vilt" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    p = params("acme/tiny-vilt")
    run_chain(p)
    side = json.loads(Path("runs/data/backbones/acme--tiny-vilt.prov.json").read_text())
    assert side["extra"]["source"] == {"kind": "hub", "repo_id": "acme/tiny-vilt", "revision": "a" * 40}
    assert Path("runs/cmml/embedded/both70/finetune_head/seed0/eval/scores.json").is_file()


def test_absent_hub_id_is_one_clear_error(project: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(project / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    Path("params.yaml").write_text(yaml.safe_dump(params("acme/not-here"), sort_keys=False))
    assert main(["run", "code"]) == 0
    assert main(["run", "data/backbone"]) == 2
    err = capsys.readouterr().err
    assert "backbone.pretrained = 'acme/not-here'" in err and "local Hugging Face cache" in err
    assert not Path("runs/data/backbones/acme--not-here").exists()


def test_text_positions_interpolated_to_max_text_len(tmp_path: Path) -> None:
    """A backbone with fewer text positions than benchmark.max_text_len (ViLT: 40) is stretched as MAP does."""
    import torch

    from cmml.data.vilt_input import interpolate_positions
    from cmml.models.backbone import load_backbone
    from cmml.models.import_backbone import stretch_positions

    tiny = {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 64, "patch_size": 8}
    vilt = new_vilt(tiny_config(30, 10, 32, tiny))
    before = {k: v.clone() for k, v in vilt.state_dict().items()}
    stretch_positions(vilt, 24, tmp_path)
    after = load_backbone(tmp_path).vilt
    key = "embeddings.text_embeddings.position_embeddings.weight"
    assert after.config.max_position_embeddings == 24
    torch.testing.assert_close(after.state_dict()[key], interpolate_positions(before[key], 24))
    assert all(torch.equal(after.state_dict()[k], v) for k, v in before.items() if k != key)
