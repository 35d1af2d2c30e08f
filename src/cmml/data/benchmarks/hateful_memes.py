"""Hateful Memes: meme images with their overlaid text, binary hateful / not hateful (AUROC, accuracy).

``benchmark.layout``:

- ``raw``: ``<root>/img/<id>.png`` and ``<root>/{train,dev,test_seen}.jsonl``, one object per line
  with ``id``, ``img`` (path relative to ``<root>``), ``text`` and ``label`` (0/1). The public
  ``test.jsonl`` has no labels, so the labelled ``test_seen.jsonl`` is the test split
  (``dev_seen.jsonl`` is read when ``dev.jsonl`` is absent);
- ``arrow``: MAP's ``<root>/hatememes_{train,dev,test}.arrow`` (``image``, ``text``, ``label``).

The licence forbids redistribution, so nothing is downloaded: :meth:`HatefulMemes.raw_files` states
the manual step. A binary task cannot be split into class-incremental tasks: the tasks stage
refuses it, so the continual families exclude it; it is meant for non-continual families.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cmml.data.benchmarks.base import Benchmark, RawFile
from cmml.data.benchmarks.realdata import Record, arrow_rows, check_common, check_keys, convert, read_arrow, split_of
from cmml.errors import DataError

CLASSES = ["not_hateful", "hateful"]
MANUAL = ("accept the licence of the Hateful Memes Challenge (hatefulmemeschallenge.com, or the DrivenData "
          "competition page), download its data archive, and unpack it so that {root}/img/ holds the PNG files and "
          "{root}/train.jsonl, {root}/dev.jsonl (or dev_seen.jsonl) and {root}/test_seen.jsonl are present; "
          "prepare then checks every line's id, img, text and label and records the files' sha256 in the manifest")
ARROW_SPLITS = ("train", "dev", "test")


class HatefulMemes(Benchmark):
    """Hateful Memes; see the module docstring."""

    NAME = "hateful_memes"
    TASK_POLICY = "none: binary labels cannot form class-incremental tasks (excluded from continual families)"

    def validate(self, bench: dict[str, Any], where: str) -> None:
        """layout and root."""
        check_common(bench, where)
        check_keys(bench, where, {"root": str}, {"layout": ("raw", "arrow")})

    def label_type(self, bench: dict[str, Any]) -> str:
        """Binary."""
        return "binary"

    def raw_files(self, bench: dict[str, Any]) -> list[RawFile]:
        """The data folder, by hand (licence)."""
        return [RawFile(bench["root"], None, MANUAL.format(root=bench["root"]))]

    def prepare(self, out: Path, bench: dict[str, Any], bench_id: str) -> dict[str, Any]:
        """Read the jsonl files (or MAP's Arrow files) and convert them."""
        root = Path(bench["root"])
        if bench["layout"] == "raw":
            files = {"train": root / "train.jsonl", "val": root / "dev.jsonl", "test": root / "test_seen.jsonl"}
            if not files["val"].is_file():
                files["val"] = root / "dev_seen.jsonl"
            absent = [str(p) for p in files.values() if not p.is_file()]
            if absent:
                raise DataError(f"{', '.join(absent)}: not found. To obtain them: {MANUAL.format(root=root)}")
            records = self._jsonl(root, files)
        else:
            files = {s: root / f"hatememes_{s}.arrow" for s in ARROW_SPLITS}
            records = self._arrow(files)
        return convert(out, bench, bench_id, records, class_names=CLASSES, label_type="binary",
                       sources={p.name: p for p in files.values()}, layout=bench["layout"])

    @staticmethod
    def _jsonl(root: Path, files: dict[str, Path]) -> Iterator[Record]:
        for split, path in files.items():
            with open(path, encoding="utf-8") as fh:
                for n, line in enumerate(fh, start=1):
                    if not line.strip():
                        continue
                    where = f"{path}: line {n}"
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise DataError(f"{where}: not valid JSON: {exc}") from None
                    absent = [k for k in ("id", "img", "text", "label") if not isinstance(obj, dict) or k not in obj]
                    if absent:
                        raise DataError(f"{where}: missing field(s) {absent} (the unlabelled test.jsonl cannot be used; "
                                        "test_seen.jsonl is the labelled test split)")
                    if obj["label"] not in (0, 1):
                        raise DataError(f"{where}: 'label' must be 0 or 1, got {obj['label']!r}")
                    yield Record(split, f"{where} (id {obj['id']})", root / obj["img"], obj["text"], (int(obj["label"]),),
                                 str(obj["id"]))

    @staticmethod
    def _arrow(files: dict[str, Path]) -> Iterator[Record]:
        for name, path in files.items():
            split = split_of(name, str(path))
            for n, (image, text, label) in enumerate(arrow_rows(read_arrow(path), path, ("image", "text", "label"))):
                text = text[0] if isinstance(text, list) and text else text if isinstance(text, str) else None
                if label not in (0, 1):
                    raise DataError(f"{path}: row {n}: 'label' must be 0 or 1, got {label!r}")
                yield Record(split, f"{path}: row {n}", image, text, (int(label),), f"{name}-{n}")


BENCHMARK = HatefulMemes()
