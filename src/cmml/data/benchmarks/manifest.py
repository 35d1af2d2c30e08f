"""A user's own image+text data, or one of RebQ's CMML manifests, as a benchmark (no code to write).

``benchmark.manifest`` names a JSON file in RebQ's CMML format (docs/data.md §2): a list of
``{image, text, label, task_id, split}`` (or ``{"class_names": [...], "samples": [...]}``), image
paths relative to ``benchmark.image_root`` (empty: the manifest's own directory). Task policy:
the tasks are the manifest's ``task_id``; single-label classes are re-indexed in task order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cmml.data.benchmarks.base import Benchmark, RawFile
from cmml.data.benchmarks.realdata import check_common, check_keys, convert, read_cmml_manifest
from cmml.errors import DataError


def image_root(bench: dict[str, Any]) -> Path:
    """Where the manifest's image paths start."""
    return Path(bench["image_root"]) if bench["image_root"] else Path(bench["manifest"]).parent


class Manifest(Benchmark):
    """A CMML JSON manifest; see the module docstring."""

    NAME = "manifest"
    TASK_POLICY = "the manifest's task_id per sample; single-label classes re-indexed in task order"

    def validate(self, bench: dict[str, Any], where: str) -> None:
        """``manifest`` (a path), ``image_root`` (a path or empty), ``label_type`` and the common keys."""
        check_common(bench, where)
        check_keys(bench, where, {"manifest": str, "image_root": str}, {"label_type": ("single", "multi")})

    def label_type(self, bench: dict[str, Any]) -> str:
        """As declared by ``benchmark.label_type`` (checked against the file by prepare)."""
        return bench["label_type"]

    def raw_files(self, bench: dict[str, Any]) -> list[RawFile]:
        """The manifest and its image folder (the user's own files; nothing to download)."""
        return [RawFile(bench["manifest"], None, "your own CMML JSON manifest (docs/data.md §2)"),
                RawFile(str(image_root(bench)), None, "the images the manifest names")]

    def prepare(self, out: Path, bench: dict[str, Any], bench_id: str) -> dict[str, Any]:
        """Read and check the manifest, convert its samples, record its task layout."""
        path = Path(bench["manifest"])
        man = read_cmml_manifest(path, image_root(bench))
        if man.label_type != bench["label_type"]:
            raise DataError(f"{path}: labels are {man.label_type}-label, but benchmark.label_type is "
                            f"{bench['label_type']!r}")
        return convert(out, bench, bench_id, man.records, class_names=man.class_names, label_type=man.label_type,
                       sources={"manifest": path}, layout="cmml_manifest",
                       task_policy={"rule": self.TASK_POLICY, "class_order": man.class_order, "offsets": man.offsets})


BENCHMARK = Manifest()
