"""Tiny fixtures in the real datasets' on-disk layouts (MM-IMDb, Food-101, Hateful Memes, MAP's Arrow
files, CMML manifests), written by the tests; shared by the real-benchmark test modules."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "the", "of", "and", "film", "man", "woman", "love",
         "war", "cake", "pie", "soup", "apple", "red", "green", "meme", "cat", "dog", "story", "recipe", "##s", "."]


def vocab(dest: Path) -> Path:
    """A small BERT-style vocab.txt."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text("\n".join(WORDS) + "\n", encoding="utf-8")
    return dest


def image_bytes(seed: int, fmt: str = "JPEG", size: tuple[int, int] = (20, 14)) -> bytes:
    """Encoded bytes of a small random RGB image (width, height = ``size``)."""
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def write(path: Path, data: bytes | str) -> Path:
    """Write ``data`` creating the parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data) if isinstance(data, bytes) else path.write_text(data, encoding="utf-8")
    return path


FILMS = {  # id: (genres, plots, split)
    "0001": (["Drama", "Romance"], ["a man and a woman", "love story"], "train"),
    "0002": (["Comedy"], ["a cat film"], "train"),
    "0003": (["Action", "War"], ["the war film"], "train"),
    "0004": (["Drama", "Comedy"], ["a red story", "the man", "a dog"], "train"),
    "0005": (["Romance"], ["love love"], "dev"),
    "0006": (["Action", "Crime"], ["a film"], "test"),
    "0007": (["Drama"], ["the woman"], "test"),
    "0008": (["Film-Noir"], ["a noir story"], "train"),  # no kept genre when num_genres < 23
}


def mmimdb_raw(root: Path) -> Path:
    """MM-IMDb's raw layout: images/<id>.jpeg, labels/<id>.json, split.json."""
    split: dict[str, list[str]] = {"train": [], "dev": [], "test": []}
    for n, (film, (genres, plots, s)) in enumerate(FILMS.items()):
        write(root / "images" / f"{film}.jpeg", image_bytes(n))
        write(root / "labels" / f"{film}.json", json.dumps({"plot": plots, "genres": genres, "title": f"t{film}"}))
        split[s].append(film)
    write(root / "split.json", json.dumps(split))
    return root


def write_arrow(path: Path, columns: dict[str, list[Any]]) -> Path:
    """An Arrow IPC file (the file format, as MAP writes it)."""
    import pyarrow as pa

    table = pa.table(columns)
    path.parent.mkdir(parents=True, exist_ok=True)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return path


def mmimdb_arrow(root: Path) -> Path:
    """MAP's mmimdb_{train,dev,test}.arrow of the same films."""
    from cmml.data.benchmarks.mmimdb import GENRES

    for s in ("train", "dev", "test"):
        films = [(n, f, v) for n, (f, v) in enumerate(FILMS.items()) if v[2] == s]
        write_arrow(root / f"mmimdb_{s}.arrow", {
            "image": [image_bytes(n) for n, _, _ in films], "plots": [v[1] for _, _, v in films],
            "label": [[int(g in v[0]) for g in GENRES] for _, _, v in films], "genres": [v[0] for _, _, v in films],
            "image_id": [f for _, f, _ in films], "split": [s] * len(films)})
    return root


FOOD = {  # file: (official folder, title or None)
    "apple_pie_0.jpg": ("train", "apple pie recipe"), "apple_pie_1.jpg": ("train", "the red apple pie"),
    "apple_pie_2.jpg": ("train", None), "apple_pie_3.jpg": ("test", "pie"),
    "cake_0.jpg": ("train", "green cake"), "cake_1.jpg": ("train", "a cake recipe"), "cake_2.jpg": ("test", "cake"),
    "soup_0.jpg": ("train", "red soup"), "soup_1.jpg": ("train", "soup of the apple"), "soup_2.jpg": ("test", "a soup"),
}


def food_images(root: Path) -> None:
    for n, (f, (folder, _)) in enumerate(FOOD.items()):
        write(root / "images" / folder / f[:f.rindex("_")] / f, image_bytes(100 + n))


def food_map_json(root: Path) -> Path:
    """MAP's Food-101 layout: images/{train,test}/<class>/, class_idx.json, text.json, split.json."""
    food_images(root)
    write(root / "class_idx.json", json.dumps({"apple_pie": 0, "cake": 1, "soup": 2}))
    write(root / "text.json", json.dumps({f: t for f, (_, t) in FOOD.items() if t is not None}))
    split = {"train": ["apple_pie_0.jpg", "apple_pie_2.jpg", "cake_0.jpg", "soup_0.jpg", "soup_1.jpg"],
             "val": ["apple_pie_1.jpg", "cake_1.jpg"], "test": ["apple_pie_3.jpg", "cake_2.jpg", "soup_2.jpg"]}
    write(root / "split.json", json.dumps(split))
    return root


def food_raw(root: Path) -> Path:
    """UPMC Food-101's own layout: images/{train,test}/<class>/ and texts/{train,test}_titles.csv."""
    food_images(root)
    for folder in ("train", "test"):
        lines = [f"{f},{t or ''},{f[:f.rindex('_')]}" for f, (d, t) in FOOD.items() if d == folder]
        write(root / "texts" / f"{folder}_titles.csv", "\n".join(lines) + "\n")
    return root


MEMES = {"train": [(1, "a cat meme", 0), (2, "the dog", 1), (3, "red cat", 0)],
         "dev": [(4, "a dog meme", 1), (5, "green meme", 0)],
         "test_seen": [(6, "the cat", 0), (7, "a dog", 1), (8, "meme", 1)]}


def memes_raw(root: Path) -> Path:
    """Hateful Memes: img/<id>.png and {train,dev,test_seen}.jsonl."""
    for split, rows in MEMES.items():
        lines = []
        for i, text, label in rows:
            write(root / "img" / f"{i:05d}.png", image_bytes(200 + i, "PNG"))
            lines.append(json.dumps({"id": i, "img": f"img/{i:05d}.png", "text": text, "label": label}))
        write(root / f"{split}.jsonl", "\n".join(lines) + "\n")
    return root


def user_manifest(root: Path, per_class: int = 3, classes: int = 4, multi: bool = False) -> Path:
    """A user's CMML manifest (2 tasks) with PNG images beside it; single-label ids deliberately not in task order."""
    task_of = {0: 1, 1: 0, 2: 1, 3: 0}  # classes 1, 3 in task 0; 0, 2 in task 1
    words = ["cat", "dog", "cake", "soup"]
    samples = []
    n = 0
    for c in range(classes):
        for split, k in (("train", per_class), ("val", 1), ("test", 2)):
            for i in range(k):
                name = f"imgs/c{c}_{split}_{i}.png"
                write(root / name, image_bytes(300 + n, "PNG", (16, 16) if n % 2 else (24, 16)))
                label: Any = c
                if multi:
                    label = [0] * classes
                    label[c] = 1
                    label[(c + 1) % classes] = int(i % 2 == 0)
                samples.append({"image": name, "text": [f"a {words[c]}", "the story"] if i % 2 else f"the {words[c]}",
                                "label": label, "task_id": c // 2 if multi else task_of[c], "split": split})
                n += 1
    write(root / "manifest.json", json.dumps({"class_names": words[:classes], "samples": samples}))
    return root / "manifest.json"


def bench_params(name: str, root: Path, vocab_file: Path, **over: Any) -> dict[str, Any]:
    """A ``benchmark`` params block for a real benchmark over fixture data."""
    base = {"name": name, "seed": 0, "num_classes": 3, "per_class": {"pretrain": 1, "train": 1, "val": 1, "test": 1},
            "image_size": 16, "max_text_len": 12, "root": str(root), "vocab": str(vocab_file), "on_bad_sample": "skip",
            "image_resize": "square"}
    return {**base, **over}
