"""Class -> task split: balanced, seeded, recorded, contiguous remap; the tasks stage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from cmml.cli import main
from cmml.data.tasks import load_tasks, split_classes
from cmml.errors import DataError

REPO = Path(__file__).resolve().parents[1]


def setup_root(root: Path, monkeypatch: pytest.MonkeyPatch, *, num_classes: int = 12, num_tasks: int = 5) -> None:
    """A working directory with a small params.yaml; the CLI runs in it."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["benchmark"].update(num_classes=num_classes, per_class={"pretrain": 1, "train": 2, "val": 1, "test": 1})
    params["tasks"]["num_tasks"] = num_tasks
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(root)


def test_split_is_balanced_with_remainder_first() -> None:
    order, offsets = split_classes(12, 5, 0)
    assert sorted(order) == list(range(12))
    assert np.diff(offsets).tolist() == [3, 3, 2, 2, 2]
    assert split_classes(20, 5, 0)[1] == [0, 4, 8, 12, 16, 20]


def test_split_is_seeded() -> None:
    assert split_classes(20, 5, 0) == split_classes(20, 5, 0)
    assert split_classes(20, 5, 0)[0] != split_classes(20, 5, 1)[0]
    assert split_classes(20, 5, 3)[0] == np.random.default_rng(3).permutation(20).tolist()


def test_tasks_stage_records_a_contiguous_remap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    setup_root(tmp_path, monkeypatch)
    assert main(["run", "data/prepare"]) == 0 and main(["run", "data/tasks"]) == 0
    rec = json.loads(Path("runs/data/embedded/tasks/tasks.json").read_text())
    manifest = json.loads(Path("runs/data/embedded/prepared/manifest.json").read_text())
    assert rec["order_seed"] == 0 and rec["num_tasks"] == 5 and rec["num_classes"] == 12
    assert rec["class_names"] == [manifest["class_names"][c] for c in rec["class_order"]]
    assert Path("runs/data/embedded/tasks.prov.json").is_file()
    ts = load_tasks(Path("runs/data/embedded/tasks"))
    assert ts.offsets == rec["offsets"] == [0, 3, 6, 8, 10, 12]
    remap = ts.remap
    for t in range(ts.num_tasks):
        owned = ts.class_order[ts.offsets[t]:ts.offsets[t + 1]]
        assert remap[owned].tolist() == list(ts.task_range(t))
        assert all(ts.task_of(int(n)) == t for n in remap[owned])
        assert ts.seen(t) == ts.offsets[t + 1]
    assert ts.tasks_of(np.arange(12)).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 4, 4]
    with pytest.raises(IndexError):
        ts.task_of(12)


def test_tasks_stage_without_data_fails_cleanly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    setup_root(tmp_path, monkeypatch)
    assert main(["run", "data/tasks"]) == 2
    assert "manifest.json" in capsys.readouterr().err
    assert not Path("runs/data/embedded/tasks").exists()
    assert not list(Path(".").rglob("*.tmp"))


def test_inconsistent_tasks_file_is_rejected(tmp_path: Path) -> None:
    bad = {"num_tasks": 2, "num_classes": 4, "class_order": [0, 1, 2, 2], "class_names": list("abcd"), "offsets": [0, 2, 4]}
    (tmp_path / "tasks.json").write_text(json.dumps(bad))
    with pytest.raises(DataError, match="tasks.json"):
        load_tasks(tmp_path)
    (tmp_path / "tasks.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_tasks(tmp_path)
