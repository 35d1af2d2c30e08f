"""The benchmark interface: what a dataset declares and how it is prepared.

A benchmark module defines ``BENCHMARK``, an instance of a :class:`Benchmark` subclass, which
declares its modalities (the axes of the per-sample modality-presence mask), its label type
(single, multi, binary), its metrics, its task policy (how classes become continual tasks), the
raw files it reads (with sha256 where known) and ``prepare``, which writes the internal format
every stage reads (``runs/data/<benchmark>/prepared``, see docs/data.md): ``{split}.parquet``
(sample_id, image bytes, text, labels, primary), ``vocab.txt`` and ``manifest.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

LABEL_TYPES = ("single", "multi", "binary")
VOCAB_FILE = "vocab.txt"


def write_split(path: Path, samples: Any) -> None:
    """Write one split (``sample_ids, images, texts, labels, primary``) as parquet with the fixed schema."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("sample_id", pa.string()), ("image", pa.binary()), ("text", pa.string()),
                        ("labels", pa.list_(pa.int64())), ("primary", pa.int64())])
    table = pa.table([samples.sample_ids, samples.images, samples.texts, samples.labels, samples.primary.tolist()],
                     schema=schema)
    pq.write_table(table, path, compression="zstd")


@dataclass(frozen=True)
class RawFile:
    """A file a benchmark reads from outside the pipeline, and how to obtain and check it."""

    path: str  # where it must be, relative to the project root
    sha256: str | None  # None: recorded on first use
    source: str  # URL, or the exact manual step when no public URL exists


class Benchmark:
    """Base class of a dataset; subclasses fill the class attributes and implement ``prepare``."""

    NAME: ClassVar[str] = ""
    MODALITIES: ClassVar[tuple[str, ...]] = ("image", "text")
    METRICS: ClassVar[dict[str, str]] = {"single": "accuracy", "multi": "f1_macro", "binary": "auroc"}
    TASK_POLICY: ClassVar[str] = ""

    def validate(self, bench: dict[str, Any], where: str) -> None:
        """Check the benchmark's own keys under ``benchmark`` in params.yaml."""

    def label_type(self, bench: dict[str, Any]) -> str:
        """single | multi | binary for these params."""
        raise NotImplementedError

    def raw_files(self, bench: dict[str, Any]) -> list[RawFile]:
        """Files read from outside the pipeline (none for a generated benchmark)."""
        return []

    def prepare(self, out: Path, bench: dict[str, Any], bench_id: str) -> dict[str, Any]:
        """Write the internal format into the empty directory ``out``; return the manifest."""
        raise NotImplementedError

    def primary_metric(self, bench: dict[str, Any]) -> str:
        """The metric the score matrix holds."""
        return self.METRICS[self.label_type(bench)]
