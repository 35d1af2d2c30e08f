"""The real benchmarks' readers and conversion on tiny fixtures in each on-disk layout: MM-IMDb raw and
Arrow, Food-101 raw, MAP's json and Arrow, Hateful Memes jsonl, CMML manifests; bad inputs; task
rules; per-film missing codes."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from realfixtures import (
    bench_params,
    food_map_json,
    food_raw,
    image_bytes,
    memes_raw,
    mmimdb_arrow,
    mmimdb_raw,
    user_manifest,
    vocab,
    write,
    write_arrow,
)

from cmml.data.benchmarks.registry import load, module_of
from cmml.data.missing import draw_grouped, draw_map
from cmml.data.tasks import policy_split, read_manifest, read_table
from cmml.errors import ConfigError, DataError


def prepare(tmp: Path, bench: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    b = load(module_of(bench["name"]))
    b.validate(bench, "params.yaml")
    out = tmp / "prepared"
    out.mkdir()
    b.prepare(out, bench, bench["name"])
    return out, read_manifest(out)


def rows(out: Path, manifest: dict[str, Any], split: str) -> list[dict[str, Any]]:
    return read_table(out, split, manifest).drop(["image"]).to_pylist()


@pytest.fixture
def voc(tmp_path: Path) -> Path:
    return vocab(tmp_path / "model" / "vocab.txt")


def test_mmimdb_raw_each_plot_a_sample_grouped_by_film(tmp_path: Path, voc: Path) -> None:
    root = mmimdb_raw(tmp_path / "mmimdb")
    bench = bench_params("mmimdb", root, voc.parent, layout="raw", num_genres=20, plots="each", missing_unit="movie",
                         num_classes=20)
    out, man = prepare(tmp_path, bench)
    assert man["label_type"] == "multi" and man["class_names"][:3] == ["Drama", "Comedy", "Romance"]
    assert man["grouped"] and man["task_policy"]["class_order"] == list(range(20))
    train = rows(out, man, "train")
    # 0001 (2 plots) + 0002 + 0003 + 0004 (3 plots); 0008 is Film-Noir only: no kept genre -> skipped
    assert [r["source_id"] for r in train] == ["0001#0", "0001#1", "0002#0", "0003#0", "0004#0", "0004#1", "0004#2"]
    assert [r["group"] for r in train][:2] == ["0001", "0001"]
    assert train[0]["labels"] == [0, 2] and train[0]["primary"] == 0  # Drama first, Romance
    assert train[3]["labels"] == [5, 14] and train[3]["primary"] == 5  # Action, War
    assert man["skipped"]["train"]["by_reason"] == {"no label among the used classes": 1}
    assert man["splits"]["val"]["count"] == 1 and man["splits"]["test"]["count"] == 2
    assert man["sources"]["split.json"] and len(man["images_sha256"]) == 64


def test_mmimdb_arrow_equals_raw_and_joined_plots(tmp_path: Path, voc: Path) -> None:
    raw = mmimdb_raw(tmp_path / "raw")
    arrow = mmimdb_arrow(tmp_path / "arrow")
    common = {"num_genres": 23, "plots": "joined", "missing_unit": "movie", "num_classes": 23}
    (tmp_path / "r").mkdir()
    (tmp_path / "a").mkdir()
    out_r, man_r = prepare(tmp_path / "r", bench_params("mmimdb", raw, voc, layout="raw", **common))
    out_a, man_a = prepare(tmp_path / "a", bench_params("mmimdb", arrow, voc, layout="arrow", **common))
    for split in ("train", "val", "test"):
        assert rows(out_r, man_r, split) == rows(out_a, man_a, split)
        assert man_r["splits"][split]["sha256"] == man_a["splits"][split]["sha256"]
    first = rows(out_r, man_r, "train")[0]
    assert first["text"] == "a man and a woman. love story" and not man_r["grouped"]
    assert rows(out_r, man_r, "train")[-1]["labels"] == [22]  # 0008 keeps Film-Noir with 23 genres


def test_food101_map_json_skips_textless_and_drops_a_named_class(tmp_path: Path, voc: Path) -> None:
    root = food_map_json(tmp_path / "food")
    out, man = prepare(tmp_path, bench_params("food101", root, voc, layout="map_json", drop_class="soup", num_classes=2))
    assert man["class_names"] == ["apple_pie", "cake"] and man["dropped"] == {"train": 2, "val": 0, "test": 1}
    assert man["skipped"]["train"] == {"total": 1, "by_reason": {"no text": 1},
                                       "examples": {"no text": [f"{root / 'split.json'}: train entry 1 (apple_pie_2.jpg)"]}}
    train = rows(out, man, "train")
    assert [(r["source_id"], r["primary"], r["text"]) for r in train] == [("apple_pie_0.jpg", 0, "apple pie recipe"),
                                                                        ("cake_0.jpg", 1, "green cake")]
    assert [r["source_id"] for r in rows(out, man, "val")] == ["apple_pie_1.jpg", "cake_1.jpg"]
    png = pq.read_table(out / "train.parquet", columns=["image"]).column(0)[0].as_py()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_food101_raw_csv_and_arrow_layouts(tmp_path: Path, voc: Path) -> None:
    root = food_raw(tmp_path / "food")
    (tmp_path / "r").mkdir()
    out, man = prepare(tmp_path / "r", bench_params("food101", root, voc, layout="raw", drop_class=""))
    assert man["class_names"] == ["apple_pie", "cake", "soup"]
    total = sum(man["splits"][s]["count"] for s in ("train", "val", "test"))
    assert total == 9 and man["skipped"]["train"]["total"] == 1  # apple_pie_2 has an empty title
    assert {r["source_id"] for r in rows(out, man, "test")} == {"apple_pie_3.jpg", "cake_2.jpg", "soup_2.jpg"}
    arrow = tmp_path / "arrow"
    for s, names in (("train", ["apple_pie_0.jpg", "cake_0.jpg"]), ("val", ["soup_0.jpg"]), ("test", ["cake_2.jpg"])):
        write_arrow(arrow / f"food101_{s}.arrow", {
            "image": [image_bytes(k) for k in range(len(names))], "text": [[f"the {n[:4]}"] for n in names],
            "label": [["apple_pie", "cake", "soup"].index(n[:n.rindex("_")]) for n in names],
            "image_id": names, "split": [s] * len(names)})
    (tmp_path / "a").mkdir()
    out, man = prepare(tmp_path / "a", bench_params("food101", arrow, voc, layout="arrow", drop_class=""))
    assert [(r["source_id"], r["primary"], r["text"]) for r in rows(out, man, "val")] == [("soup_0.jpg", 2, "the soup")]


def test_hateful_memes_jsonl_binary_and_excluded_from_continual_tasks(tmp_path: Path, voc: Path) -> None:
    root = memes_raw(tmp_path / "hm")
    out, man = prepare(tmp_path, bench_params("hateful_memes", root, voc, layout="raw", num_classes=2))
    assert man["label_type"] == "binary" and man["class_names"] == ["not_hateful", "hateful"]
    assert [r["primary"] for r in rows(out, man, "test")] == [0, 1, 1]  # test_seen is the test split
    from cmml.data.tasks import run as tasks_run

    class S:
        deps = [str(out)]
    with pytest.raises(DataError, match="binary benchmark.*cannot be split"):
        tasks_run(S(), {"tasks": {"num_tasks": 1, "order_seed": 0}})


def test_user_manifest_tasks_from_task_id(tmp_path: Path, voc: Path) -> None:
    path = user_manifest(tmp_path / "mine")
    bench = bench_params("manifest", tmp_path, voc, manifest=str(path), image_root="", label_type="single",
                         num_classes=4)
    out, man = prepare(tmp_path, bench)
    assert man["class_names"] == ["cat", "dog", "cake", "soup"]
    assert man["task_policy"]["class_order"] == [1, 3, 0, 2] and man["task_policy"]["offsets"] == [0, 2, 4]
    assert policy_split(man, out, 2, 0) == ([1, 3, 0, 2], [0, 2, 4])
    with pytest.raises(DataError, match="define 2 tasks.*set tasks.num_tasks: 2"):
        policy_split(man, out / "manifest.json", 3, 0)
    texts = [r["text"] for r in rows(out, man, "train")]
    assert texts[:2] == ["the cat", "a cat. the story"]  # a text list is joined with ". "


def test_rebq_multi_hot_manifest(tmp_path: Path, voc: Path) -> None:
    path = user_manifest(tmp_path / "mine", multi=True)
    bench = bench_params("manifest", tmp_path, voc, manifest=str(path), image_root="", label_type="multi",
                         num_classes=4)
    out, man = prepare(tmp_path, bench)
    assert man["task_policy"]["offsets"] == [0, 2, 4] and man["task_policy"]["class_order"] == [0, 1, 2, 3]
    r = rows(out, man, "train")
    assert r[0]["labels"] == [0, 1] and r[1]["labels"] == [0]  # primary (own task) first, then the others
    assert r[-3]["labels"] == [3, 0]  # class 3 (task 1) primary, class 0 of task 0 kept


def test_mmimdb_rebq_manifest_layout(tmp_path: Path, voc: Path) -> None:
    path = user_manifest(tmp_path / "mm", multi=True)
    bench = bench_params("mmimdb", tmp_path / "mm", voc, layout="cmml_manifest", manifest=str(path), num_genres=20,
                         plots="joined", missing_unit="movie", num_classes=4)
    (tmp_path / "mm" / "images").symlink_to(tmp_path / "mm")
    out, man = prepare(tmp_path, bench)
    assert man["class_names"] == ["Drama", "Comedy", "Romance", "Thriller"] and man["task_policy"]["offsets"] == [0, 2, 4]


# ---- bad input: one clear error naming file and entry, nothing else touched ------------------------

def test_corrupt_image_is_reported_with_its_id(tmp_path: Path, voc: Path) -> None:
    root = mmimdb_raw(tmp_path / "mmimdb")
    write(root / "images" / "0002.jpeg", image_bytes(2)[:40])  # truncated JPEG
    common = {"layout": "raw", "num_genres": 23, "plots": "joined", "missing_unit": "movie", "num_classes": 23}
    with pytest.raises(DataError, match=r"split.json: train id 0002: unreadable image"):
        prepare(tmp_path, bench_params("mmimdb", root, voc, on_bad_sample="fail", **common))
    (tmp_path / "k").mkdir()
    _, man = prepare(tmp_path / "k", bench_params("mmimdb", root, voc, **common))
    assert man["skipped"]["train"]["by_reason"] == {"unreadable image": 1}
    assert man["skipped"]["train"]["examples"] == {"unreadable image": [f"{root / 'split.json'}: train id 0002"]}


def test_split_id_without_image(tmp_path: Path, voc: Path) -> None:
    root = mmimdb_raw(tmp_path / "mmimdb")
    (root / "images" / "0006.jpeg").unlink()
    with pytest.raises(DataError, match=r"split.json: test id 0006 plot 0: image file not found \(.*0006.jpeg\)"):
        prepare(tmp_path, bench_params("mmimdb", root, voc, on_bad_sample="fail", layout="raw", num_genres=23,
                                       plots="each", missing_unit="movie", num_classes=23))


def test_jsonl_line_without_label(tmp_path: Path, voc: Path) -> None:
    root = memes_raw(tmp_path / "hm")
    lines = (root / "dev.jsonl").read_text().splitlines()
    obj = json.loads(lines[1])
    del obj["label"]
    write(root / "dev.jsonl", "\n".join([lines[0], json.dumps(obj)]) + "\n")
    with pytest.raises(DataError, match=r"dev.jsonl: line 2: missing field\(s\) \['label'\]"):
        prepare(tmp_path, bench_params("hateful_memes", root, voc, layout="raw", num_classes=2))


@pytest.mark.parametrize(("edit", "message"), [
    (lambda e: e.pop("task_id"), r"entry 3: missing field\(s\) \['task_id'\]"),
    (lambda e: e.update(split="holdout"), r"entry 3: unknown split 'holdout'"),
    (lambda e: e.update(label=[1, 0]), r"entry 3: 'label' must be a non-negative int"),
    (lambda e: e.update(task_id=0), r"entry 3: class 0 is in task 0 here and in task 1 earlier"),
])
def test_manifest_entry_errors(tmp_path: Path, voc: Path, edit: Any, message: str) -> None:
    path = user_manifest(tmp_path / "mine")
    obj = json.loads(path.read_text())
    edit(obj["samples"][3])
    path.write_text(json.dumps(obj))
    bench = bench_params("manifest", tmp_path, voc, manifest=str(path), image_root="", label_type="single", num_classes=4)
    with pytest.raises(DataError, match=message) as exc:
        prepare(tmp_path, bench)
    assert str(path) in str(exc.value)


def test_params_errors(tmp_path: Path, voc: Path) -> None:
    root = food_map_json(tmp_path / "food")
    with pytest.raises(ConfigError, match="benchmark.num_classes' is 3.*has 2 classes; set it to 2"):
        prepare(tmp_path, bench_params("food101", root, voc, layout="map_json", drop_class="soup"))
    with pytest.raises(ConfigError, match="benchmark.layout' must be one of"):
        load("cmml.data.benchmarks.food101").validate(bench_params("food101", root, voc, layout="tar", drop_class=""), "p.yaml")
    (tmp_path / "x").mkdir()
    with pytest.raises(ConfigError, match="drop_class' is 'pizza'"):
        prepare(tmp_path / "x", bench_params("food101", root, voc, layout="map_json", drop_class="pizza"))
    (tmp_path / "y").mkdir()
    with pytest.raises(DataError, match="vocabulary not found"):
        prepare(tmp_path / "y", bench_params("food101", root, tmp_path / "nowhere", layout="map_json", drop_class=""))


# ---- per-film missing codes ------------------------------------------------------------------------

def test_grouped_codes_share_a_film_and_keep_the_rate() -> None:
    groups = [f"film{i // 3}" for i in range(300)]  # 100 films, 3 plots each
    codes = draw_grouped(groups, 0.7, "both", 0.5, random.Random(1))
    per_film = {g: {c for gg, c in zip(groups, codes) if gg == g} for g in groups}
    assert all(len(v) == 1 for v in per_film.values())
    film_codes = [next(iter(per_film[f"film{i}"])) for i in range(100)]
    assert film_codes == draw_map(100, 0.7, "both", 0.5, random.Random(1))
    assert sum(c != 0 for c in film_codes) == 70 and film_codes.count(2) == 35


def test_manual_steps_are_exact_messages(tmp_path: Path, voc: Path) -> None:
    """No public URL (licence, dead host): the error says which file, from where, to which path, what is checked."""
    with pytest.raises(DataError, match=r"hm/train.jsonl.*not found. To obtain them: accept the licence .*"
                                        r"hm/img/ holds the PNG files.*test_seen.jsonl.*sha256"):
        prepare(tmp_path, bench_params("hateful_memes", tmp_path / "hm", voc, layout="raw", num_classes=2))
    food = tmp_path / "food"
    (food / "images" / "train" / "cake").mkdir(parents=True)
    (tmp_path / "f").mkdir()
    with pytest.raises(DataError, match=r"food/texts/train_titles.csv: not found; the titles' original host is gone"):
        prepare(tmp_path / "f", bench_params("food101", food, voc, layout="raw", drop_class=""))
