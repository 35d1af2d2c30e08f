"""UPMC Food-101: food photos and the titles of the recipe pages they came from, 101 classes (top-1).

``benchmark.layout``:

- ``map_json`` (MAP's layout): ``<root>/images/{train,test}/<class>/<file>``, ``class_idx.json``
  (class name -> id), ``text.json`` (file name -> title) and ``split.json`` (``train``/``val``/``test``
  lists of file names; val and train images live under ``images/train``). A file's class is its
  name up to the last ``_``;
- ``raw``: ``<root>/images/{train,test}/<class>/<file>`` and ``<root>/texts/{train,test}_titles.csv``
  (rows ``file,title,class``, an optional header row). Classes in sorted order; val is carved
  from the official train set: the files whose sha256 of the name is 0 modulo 10 (about 10 %,
  fixed, no seed);
- ``arrow``: MAP's ``<root>/food101_{train,val,test}.arrow`` (``image``, ``text`` (one-element list),
  ``label``, ``image_id``);
- ``cmml_manifest``: RebQ's UPMC-Food101-CMML JSON (``benchmark.manifest``, images under ``<root>/images``).

``benchmark.drop_class`` names one class to leave out ("" keeps all 101): RebQ's Food101-CMML
uses 100 classes without saying which one it drops. Its samples are counted in the manifest
(``dropped``), not treated as bad. Samples without a title are bad samples (MAP drops them;
``benchmark.on_bad_sample: skip`` counts them). Task policy: the class order of ``class_idx.json``
(sorted names in the raw layout) without the dropped class, cut into ``tasks.num_tasks``
contiguous tasks (100 classes, 10 tasks: 10 each). The manifest layout takes the tasks from the file.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cmml.data.benchmarks.base import Benchmark, RawFile
from cmml.data.benchmarks.realdata import (
    Record,
    arrow_rows,
    check_common,
    check_keys,
    convert,
    read_arrow,
    read_cmml_manifest,
    read_json_file,
    split_of,
)
from cmml.errors import ConfigError, DataError

IMAGES_URL = "https://visiir.isir.upmc.fr/ (UPMC Food-101 images archive; Kaggle mirror: gianmarco96/upmcfood101)"
TEXTS_STEP = ("the titles' original host is gone: download texts/{train,test}_titles.csv (Kaggle dataset "
              "gianmarco96/upmcfood101, folder texts) or MAP's class_idx.json/text.json/split.json")
ARROW_SPLITS = ("train", "val", "test")


def class_of(file_name: str, where: str) -> str:
    """``apple_pie_12.jpg`` -> ``apple_pie``."""
    if "_" not in file_name:
        raise DataError(f"{where}: file name {file_name!r} has no '<class>_<n>' form")
    return file_name[:file_name.rindex("_")]


def is_val(file_name: str) -> bool:
    """The raw layout's fixed val carve-out of the official train set (about 10 %)."""
    return int.from_bytes(hashlib.sha256(file_name.encode()).digest()[:8], "big") % 10 == 0


class Food101(Benchmark):
    """UPMC Food-101; see the module docstring."""

    NAME = "food101"
    TASK_POLICY = ("classes in class_idx.json order (sorted in the raw layout) without benchmark.drop_class, "
                   "cut into tasks.num_tasks contiguous tasks")

    def validate(self, bench: dict[str, Any], where: str) -> None:
        """layout, root, drop_class (+ manifest for the manifest layout)."""
        check_common(bench, where)
        check_keys(bench, where, {"root": str, "drop_class": str}, {"layout": ("map_json", "raw", "arrow", "cmml_manifest")})
        if bench["layout"] == "cmml_manifest":
            check_keys(bench, where, {"manifest": str})

    def label_type(self, bench: dict[str, Any]) -> str:
        """One class per sample."""
        return "single"

    def raw_files(self, bench: dict[str, Any]) -> list[RawFile]:
        """Images (public archive) and texts (manual step: their host is gone)."""
        root = Path(bench["root"])
        if bench["layout"] == "arrow":
            return [RawFile(bench["root"], None, "MAP's write_food101 output (food101_{train,val,test}.arrow)")]
        if bench["layout"] == "cmml_manifest":
            return [RawFile(bench["manifest"], None, "RebQ's data/UPMC-Food101-CMML/UPMC-Food101-CMML.json"),
                    RawFile(str(root / "images"), None, IMAGES_URL)]
        texts = ["class_idx.json", "text.json", "split.json"] if bench["layout"] == "map_json" else ["texts"]
        return [RawFile(str(root / "images"), None, IMAGES_URL), *(RawFile(str(root / t), None, TEXTS_STEP) for t in texts)]

    def prepare(self, out: Path, bench: dict[str, Any], bench_id: str) -> dict[str, Any]:
        """Read the layout, leave out the dropped class, convert, record the task rule."""
        root, layout = Path(bench["root"]), bench["layout"]
        if layout == "cmml_manifest":
            man = read_cmml_manifest(Path(bench["manifest"]), root / "images")
            if man.label_type != "single":
                raise DataError(f"{bench['manifest']}: Food-101 manifests hold int labels, found multi-hot ones")
            return convert(out, bench, bench_id, man.records, class_names=man.class_names, label_type="single",
                           sources={"manifest": Path(bench["manifest"])}, layout=layout,
                           task_policy={"rule": "the manifest's task_id", "class_order": man.class_order,
                                        "offsets": man.offsets})
        if layout == "map_json":
            classes, sources, rows = self._map_json(root)
        elif layout == "raw":
            classes, sources, rows = self._raw(root)
        else:
            classes, sources, rows = self._arrow(root)
        drop = bench["drop_class"]
        if drop and drop not in classes:
            raise ConfigError(f"params.yaml: key 'benchmark.drop_class' is {drop!r}, not a class of {root} "
                              f"(e.g. {classes[:3]})")
        kept = [c for c in classes if c != drop]
        index = {c: i for i, c in enumerate(kept)}
        dropped = dict.fromkeys(("train", "val", "test"), 0)

        def records() -> Iterator[Record]:
            for split, source, name, cls, image, text in rows:
                if cls == drop:
                    dropped[split] += 1
                    continue
                if cls not in index:
                    raise DataError(f"{source}: class {cls!r} of {name!r} is not among the {len(classes)} classes")
                yield Record(split, source, image, text, (index[cls],), name)

        manifest = convert(out, bench, bench_id, records(), class_names=kept, label_type="single", sources=sources,
                           layout=layout, task_policy={"rule": self.TASK_POLICY, "class_order": list(range(len(kept)))},
                           extra={"drop_class": drop, "dropped": dropped})
        return manifest

    @staticmethod
    def _map_json(root: Path) -> tuple[list[str], dict[str, Path], Iterator[tuple[Any, ...]]]:
        files = {n: root / n for n in ("class_idx.json", "text.json", "split.json")}
        idx = read_json_file(files["class_idx.json"], "Food-101 class index")
        texts = read_json_file(files["text.json"], "Food-101 texts")
        splits = read_json_file(files["split.json"], "Food-101 split file")
        if not isinstance(idx, dict) or sorted(idx.values()) != list(range(len(idx))):
            raise DataError(f"{files['class_idx.json']}: expected an object class name -> id 0..C-1")
        if not isinstance(texts, dict) or not isinstance(splits, dict):
            raise DataError(f"{files['text.json']} / {files['split.json']}: expected JSON objects")
        classes = sorted(idx, key=idx.__getitem__)

        def rows() -> Iterator[tuple[Any, ...]]:
            for name, samples in splits.items():
                split = split_of(name, str(files["split.json"]))
                folder = "test" if split == "test" else "train"
                for n, f in enumerate(samples):
                    where = f"{files['split.json']}: {name} entry {n} ({f})"
                    cls = class_of(f, where)
                    text = texts.get(f)
                    yield split, where, f, cls, root / "images" / folder / cls / f, text if isinstance(text, str) else None

        return classes, files, rows()

    @staticmethod
    def _raw(root: Path) -> tuple[list[str], dict[str, Path], Iterator[tuple[Any, ...]]]:
        train_dir = root / "images" / "train"
        if not train_dir.is_dir():
            raise DataError(f"{train_dir}: Food-101 image folder not found ({IMAGES_URL})")
        classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
        files = {f"{s}_titles.csv": root / "texts" / f"{s}_titles.csv" for s in ("train", "test")}
        for path in files.values():
            if not path.is_file():
                raise DataError(f"{path}: not found; {TEXTS_STEP}")

        def rows() -> Iterator[tuple[Any, ...]]:
            for official in ("train", "test"):
                path = files[f"{official}_titles.csv"]
                with open(path, newline="", encoding="utf-8") as fh:
                    for n, row in enumerate(csv.reader(fh)):
                        where = f"{path}: line {n + 1}"
                        if n == 0 and row and not row[0].lower().endswith((".jpg", ".jpeg", ".png")):
                            continue  # header
                        if len(row) < 3:
                            raise DataError(f"{where}: expected 'file,title,class', got {len(row)} field(s)")
                        f, text, cls = row[0], row[1], row[2]
                        split = official if official == "test" or not is_val(f) else "val"
                        yield split, where, f, cls, root / "images" / official / cls / f, text

        return classes, files, rows()

    @staticmethod
    def _arrow(root: Path) -> tuple[list[str], dict[str, Path], Iterator[tuple[Any, ...]]]:
        files = {f"food101_{s}.arrow": root / f"food101_{s}.arrow" for s in ARROW_SPLITS}
        tables = {s: read_arrow(files[f"food101_{s}.arrow"]) for s in ARROW_SPLITS}
        names: dict[int, str] = {}
        for s, t in tables.items():
            for f, lab in arrow_rows(t, files[f"food101_{s}.arrow"], ("image_id", "label")):
                names.setdefault(int(lab), class_of(str(f), f"{files[f'food101_{s}.arrow']}: image_id"))
        classes = [names.get(i, f"class{i}") for i in range(1 + max(names, default=-1))]

        def rows() -> Iterator[tuple[Any, ...]]:
            for s in ARROW_SPLITS:
                path = files[f"food101_{s}.arrow"]
                for n, (image, text, lab, f) in enumerate(arrow_rows(tables[s], path, ("image", "text", "label", "image_id"))):
                    text = text[0] if isinstance(text, list) and text else text if isinstance(text, str) else None
                    yield s, f"{path}: row {n} ({f})", str(f), classes[int(lab)], image, text

        return classes, files, rows()


BENCHMARK = Food101()
