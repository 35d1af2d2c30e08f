"""Missing-modality tables: MAP's draw, exact proportions, seeding, MAP compatibility, integrity."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from cmml.cli import main
from cmml.config import load_params
from cmml.data import missing as M
from cmml.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]
MISSING = Path("runs/data/embedded/missing")


def set_params(root: Path, **dotted: Any) -> None:
    """Override dotted keys of ``root/params.yaml``."""
    path = root / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for key, value in dotted.items():
        *parents, last = key.split(".")
        node = params
        for p in parents:
            node = node[p]
        node[last] = value
    path.write_text(yaml.safe_dump(params))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Prepared data and a 2-task split: 8 classes, 100 train / 20 val / 40 test rows per task."""
    root = tmp_path_factory.mktemp("prepared")
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    set_params(root, **{"benchmark.num_classes": 8, "tasks.num_tasks": 2,
                        "benchmark.per_class": {"pretrain": 2, "train": 25, "val": 5, "test": 10}})
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert main(["run", "data/prepare"]) == 0 and main(["run", "data/tasks"]) == 0
    finally:
        os.chdir(cwd)
    return root


@pytest.fixture
def root(prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the prepared tree, as the working directory."""
    dst = tmp_path / "root"
    shutil.copytree(prepared, dst)
    monkeypatch.chdir(dst)
    return dst


def index(setting: str, seed: int) -> dict[str, Any]:
    return json.loads((MISSING / setting / f"seed{seed}" / "index.json").read_text())


def codes_of(setting: str, seed: int, entry: dict[str, Any]) -> list[int]:
    lines = (MISSING / setting / f"seed{seed}" / entry["file"]).read_text().splitlines()[1:]
    return [int(line.rsplit(",", 1)[1]) for line in lines]


def map_table(total_num: int, missing_ratio: float, missing_type: str, both_ratio: float) -> list[int]:
    """MAP's own code (missing-aware prompts, dataset __init__), drawing with the global ``random``."""
    missing_table = torch.zeros(total_num)
    if missing_ratio > 0:
        missing_index = random.sample(range(total_num), int(total_num * missing_ratio))
        if missing_type == "text":
            missing_table[missing_index] = 1
        elif missing_type == "image":
            missing_table[missing_index] = 2
        elif missing_type == "both":
            missing_table[missing_index] = 1
            missing_index_image = random.sample(missing_index, int(len(missing_index) * both_ratio))
            missing_table[missing_index_image] = 2
    return missing_table.long().tolist()


# --- the draw ---------------------------------------------------------------------------------

@pytest.mark.parametrize("n, ratio, mtype, both, expected", [
    (100, 0.7, "both", 0.5, {0: 30, 1: 35, 2: 35}),
    (100, 0.7, "text", 0.5, {0: 30, 1: 70}),
    (100, 0.7, "image", 0.5, {0: 30, 2: 70}),
    (7, 0.5, "both", 0.5, {0: 4, 1: 2, 2: 1}),        # int(3.5) = 3 drawn, int(1.5) = 1 image-missing
    (100, 0.29, "text", 0.5, {0: 72, 1: 28}),         # int(100 * 0.29) = int(28.999...) = 28, as in MAP
    (10, 1.0, "both", 1.0, {2: 10}),
    (10, 0.0, "both", 0.5, {0: 10}),
])
def test_draw_map_proportions(n: int, ratio: float, mtype: str, both: float, expected: dict[int, int]) -> None:
    assert dict(Counter(M.draw_map(n, ratio, mtype, both, random.Random(1)))) == expected


def test_draw_map_never_removes_both_modalities_and_skips_rng_at_zero() -> None:
    rng = random.Random(5)
    state = rng.getstate()
    assert M.draw_map(50, 0.0, "both", 0.5, rng) == [0] * 50
    assert rng.getstate() == state  # MAP draws nothing when the ratio is 0
    assert set(M.draw_map(50, 0.9, "both", 0.5, rng)) <= {0, 1, 2}
    with pytest.raises(ConfigError):
        M.draw_map(10, 1.5, "both", 0.5, rng)
    with pytest.raises(ConfigError):
        M.draw_map(10, 0.5, "audio", 0.5, rng)


def test_draw_map_reproduces_map_snippet() -> None:
    cases = [(150, 0.7, "both", 0.5), (40, 0.7, "both", 0.5), (80, 0.3, "text", 0.5), (60, 0.0, "both", 0.5),
             (70, 0.9, "image", 0.5)]
    random.seed(0)
    expected = [map_table(*c) for c in cases]
    random.seed(0)
    assert [M.draw_map(*c, rng=random) for c in cases] == expected
    rng = random.Random(0)  # a local generator seeded alike gives the same stream
    assert [M.draw_map(*c, rng=rng) for c in cases] == expected


# --- the stage --------------------------------------------------------------------------------

def test_stage_tables_follow_map_rules_and_names_carry_inputs(root: Path) -> None:
    assert main(["run", "data/missing/both70/seed0"]) == 0
    idx = index("both70", 0)
    assert idx["mode"] == "local" and [(e["task"], e["split"]) for e in idx["tables"]] == \
        [(t, s) for t in (0, 1) for s in ("train", "val", "test")]
    pattern = re.compile(r"embedded_task(\d)_(train|val|test)_missing_(both|text|image)_(\d\.\d\d)"
                         r"_both(\d\.\d\d)_seed(\d+)_n(\d+)\.csv")
    for e in idx["tables"]:
        m = pattern.fullmatch(e["file"])
        assert m and m.groups() == (str(e["task"]), e["split"], e["type"], f"{e['ratio']:.2f}",
                                    f"{e['both_ratio']:.2f}", "0", str(e["n"]))
        codes = codes_of("both70", 0, e)
        k = int(e["n"] * 0.7)
        assert Counter(codes) == Counter({2: int(k * 0.5), 1: k - int(k * 0.5), 0: e["n"] - k})
        assert e["counts"] == {str(c): codes.count(c) for c in (0, 1, 2)}
    train0 = next(e for e in idx["tables"] if e["task"] == 0 and e["split"] == "train")
    assert train0["n"] == 100 and train0["counts"] == {"0": 30, "1": 35, "2": 35}
    assert (MISSING / "both70/seed0.prov.json").is_file()


def test_stage_is_deterministic_and_inputs_change_tables(root: Path) -> None:
    for seed in (0, 1):
        assert main(["run", f"data/missing/both70/seed{seed}"]) == 0
    first = index("both70", 0)
    assert main(["run", "data/missing/both70/seed0"]) == 0
    assert index("both70", 0) == first
    other = index("both70", 1)
    tables = {(e["task"], e["split"]): codes_of("both70", 0, e) for e in first["tables"]}
    assert all(a["sha256"] != b["sha256"] for a, b in zip(first["tables"], other["tables"]))
    assert tables[(0, "train")] != tables[(1, "train")]  # same size, other task
    assert tables[(0, "val")] != tables[(1, "val")]
    assert tables[(0, "test")][:20] != tables[(0, "val")]  # other split


def test_train_and_test_settings_are_applied(root: Path) -> None:
    set_params(root, **{"settings.mixed": {"train": {"type": "text", "ratio": 0.5},
                                           "test": {"type": "image", "ratio": 0.25}, "both_ratio": 0.5},
                        "cmml.experiments.main.settings": ["mixed"]})
    assert main(["run", "data/missing/mixed/seed0"]) == 0
    for e in index("mixed", 0)["tables"]:
        want = ("text", 0.5) if e["split"] == "train" else ("image", 0.25)
        assert (e["type"], e["ratio"]) == want
        assert e["counts"][str(1 if e["split"] == "train" else 2)] == int(e["n"] * want[1])


def test_map_compat_mode_reproduces_map(root: Path) -> None:
    set_params(root, **{"missing.map_compat": True})
    state = random.getstate()
    assert main(["run", "data/missing/both70/seed0"]) == 0
    assert random.getstate() == state  # the global generator is restored
    idx = index("both70", 0)
    assert idx["mode"] == "map_compat"
    random.seed(0)
    first = idx["tables"][0]
    assert (first["task"], first["split"]) == (0, "train")
    assert codes_of("both70", 0, first) == map_table(first["n"], 0.7, "both", 0.5)

    # with one task the three tables are exactly MAP's train, val, test draws after random.seed(seed)
    set_params(root, **{"tasks.num_tasks": 1})
    assert main(["run", "data/tasks"]) == 0 and main(["run", "data/missing/both70/seed0"]) == 0
    random.seed(0)
    for e in index("both70", 0)["tables"]:
        assert codes_of("both70", 0, e) == map_table(e["n"], 0.7, "both", 0.5), e["split"]


# --- integrity and bad input --------------------------------------------------------------------

def test_load_codes_verifies_tables(root: Path) -> None:
    assert main(["run", "data/missing/both70/seed0"]) == 0
    mdir = MISSING / "both70/seed0"
    entry = index("both70", 0)["tables"][0]
    path = mdir / entry["file"]
    ids = [line.split(",")[0] for line in path.read_text().splitlines()[1:]]
    codes = M.load_codes(mdir, 0, "train", ids)
    assert codes.dtype == np.int64 and codes.tolist() == codes_of("both70", 0, entry)
    with pytest.raises(DataError, match=re.escape(entry["file"])):
        M.load_codes(mdir, 0, "train", ids[::-1])
    with pytest.raises(DataError, match="no table for task 7"):
        M.load_codes(mdir, 7, "train", ids)
    text = path.read_text()
    path.write_text(text.replace(",0\n", ",2\n", 1))
    with pytest.raises(DataError, match=re.escape(entry["file"]) + ".*altered"):
        M.load_codes(mdir, 0, "train", ids)


def test_ratio_out_of_range_is_a_config_error(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    set_params(root, **{"settings.both70.train.ratio": 1.5})
    with pytest.raises(ConfigError, match=r"settings\.both70\.train\.ratio.*\[0, 1\]"):
        load_params(root / "params.yaml")
    assert main(["run", "data/missing/both70/seed0"]) == 2
    assert "settings.both70.train.ratio" in capsys.readouterr().err
    assert not MISSING.exists()


def test_corrupt_data_fails_without_output(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parquet = Path("runs/data/embedded/prepared/val.parquet")
    parquet.write_bytes(parquet.read_bytes()[:-100])
    assert main(["run", "data/missing/both70/seed0"]) == 2
    assert "val.parquet" in capsys.readouterr().err
    assert not MISSING.exists() and not list(Path("runs").rglob("*.tmp"))


def test_failure_mid_stage_leaves_no_half_written_output(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def failing(*args: Any, **kwargs: Any) -> list[int]:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    real = M.draw_map
    monkeypatch.setattr(M, "draw_map", failing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        main(["run", "data/missing/both70/seed0"])
    assert len(calls) == 3
    assert not (MISSING / "both70/seed0").exists()
    assert not list(Path("runs").rglob("*.tmp"))
