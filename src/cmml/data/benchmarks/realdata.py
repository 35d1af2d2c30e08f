"""What every real benchmark shares: raw records, their readers and the conversion to the internal format.

A benchmark module reads its on-disk layout into :class:`Record` objects (one per sample: split,
image file or bytes, text, class ids in the benchmark's class order, optional group and task) and
hands them to :func:`convert`, which writes the prepared format of docs/data.md §5:

- each image is decoded (a corrupt one is a bad sample), converted to RGB, resized (bicubic) and
  stored as PNG: to ``benchmark.image_size`` squared (``benchmark.image_resize: square``) or as
  ViLT does, shorter side ``image_size``, sides multiples of 32 (``vilt``; batches are then padded
  with a pixel mask, :mod:`cmml.data.vilt_input`);
- a bad sample (no text, no image file, an undecodable image, no label among the used classes) is
  handled by ``benchmark.on_bad_sample``: ``fail`` stops with its source (file and entry), ``skip``
  leaves it out and counts it per split and reason in the manifest (the first few sources too);
- extra parquet columns: ``source_id`` (where the sample came from) and, when samples share one
  missing code (a film's plots), ``group``;
- ``vocab.txt`` is copied from ``benchmark.vocab`` (the backbone's own WordPiece vocabulary) and
  the text statistics at ``benchmark.max_text_len`` are recorded (truncation is allowed and counted);
- the manifest records the sha256 of every index file read and one digest over every image's bytes.

The readers of the shared layouts live here too: MAP's Arrow files and RebQ's CMML JSON manifests
(also the format of a user's own data).
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cmml.data.benchmarks.base import VOCAB_FILE
from cmml.errors import ConfigError, DataError
from cmml.pipeline.atomic import write_json
from cmml.provenance.hashing import hash_file

if TYPE_CHECKING:
    import pyarrow as pa

SPLITS = ("train", "val", "test")
POLICIES = ("fail", "skip")
ROW_GROUP = 256  # rows per parquet row group: what the lazy image store reads at once
EXAMPLES = 5  # sources of skipped samples kept per split and reason


@dataclass(frozen=True)
class Record:
    """One raw sample before conversion."""

    split: str  # train | val | test
    source: str  # where it came from, for messages: "<file>: entry <n>" or "<file>"
    image: Path | bytes | None  # an image file, its encoded bytes, or None when the layout has none
    text: str | None
    labels: tuple[int, ...]  # class ids in the benchmark's order, primary first; empty = no usable label
    source_id: str = ""  # the dataset's own id (film id, file name)
    group: str | None = None  # samples of one group share one missing code


def check_keys(bench: dict[str, Any], where: str, required: dict[str, type | tuple[type, ...]],
               choices: dict[str, tuple[str, ...]] | None = None) -> None:
    """Presence and type of ``benchmark.<key>`` for ``required``, membership for ``choices``."""
    for key, types in required.items():
        val = bench.get(key)
        if not isinstance(val, types) or isinstance(val, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
            names = "/".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
            raise ConfigError(f"{where}: key 'benchmark.{key}' must be {names}, got {val!r}")
    for key, allowed in (choices or {}).items():
        if bench.get(key) not in allowed:
            raise ConfigError(f"{where}: key 'benchmark.{key}' must be one of {list(allowed)}, got {bench.get(key)!r}")


COMMON_KEYS: dict[str, type | tuple[type, ...]] = {"vocab": str, "on_bad_sample": str, "image_resize": str}
RESIZES = ("square", "vilt")


def check_common(bench: dict[str, Any], where: str) -> None:
    """The keys every real benchmark reads: ``vocab``, ``on_bad_sample`` and ``image_resize``."""
    check_keys(bench, where, COMMON_KEYS, {"on_bad_sample": POLICIES, "image_resize": RESIZES})


def vocab_path(bench: dict[str, Any]) -> Path:
    """``benchmark.vocab``: a vocab.txt or a model directory holding one."""
    p = Path(bench["vocab"]).expanduser()
    return p / VOCAB_FILE if p.is_dir() else p


def read_json_file(path: Path, what: str) -> Any:
    """Parsed JSON of ``path``; DataError naming it when absent or malformed."""
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: {what} is not valid JSON: {exc}") from None


def read_arrow(path: Path) -> pa.Table:
    """An Arrow IPC file (MAP writes the file format; the stream format is accepted too)."""
    import pyarrow as pa

    if not path.is_file():
        raise DataError(f"{path}: Arrow file not found")
    try:
        with pa.memory_map(str(path)) as src:
            return pa.ipc.open_file(src).read_all()
    except pa.ArrowInvalid:
        try:
            with pa.memory_map(str(path)) as src:
                return pa.ipc.open_stream(src).read_all()
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{path}: not an Arrow IPC file: {exc}") from None


def arrow_rows(table: pa.Table, path: Path, columns: tuple[str, ...]) -> Iterator[tuple[Any, ...]]:
    """Rows of the named columns, one record batch in memory at a time; DataError naming absent columns."""
    absent = [c for c in columns if c not in table.column_names]
    if absent:
        raise DataError(f"{path}: Arrow file lacks column(s) {absent}; has {table.column_names}")
    for batch in table.select(list(columns)).to_batches(max_chunksize=ROW_GROUP):
        yield from zip(*(batch.column(c).to_pylist() for c in range(len(columns))))


def join_text(text: Any, where: str) -> str:
    """A text field: a string, or a list of strings joined with ". " (RebQ)."""
    if isinstance(text, str):
        return text
    if isinstance(text, list) and all(isinstance(t, str) for t in text):
        return ". ".join(text)
    raise DataError(f"{where}: 'text' must be a string or a list of strings, got {type(text).__name__}")


def split_of(name: str, where: str) -> str:
    """train | val | test (``dev`` is read as val); DataError otherwise."""
    split = "val" if name == "dev" else name
    if split not in SPLITS:
        raise DataError(f"{where}: unknown split {name!r}; expected one of {list(SPLITS)} (or 'dev')")
    return split


@dataclass(frozen=True)
class CmmlManifest:
    """A RebQ-style CMML manifest read and checked: records, class count, label type, task layout."""

    records: list[Record]
    num_classes: int
    label_type: str  # single | multi
    class_order: list[int]  # original ids in task order
    offsets: list[int]
    class_names: list[str]


def read_cmml_manifest(path: Path, image_root: Path) -> CmmlManifest:
    """RebQ's CMML JSON: a list of {image, text, label, task_id, split} (docs/data.md §2).

    ``image`` is relative to ``image_root``; ``text`` a string or a list (joined with ". ");
    ``label`` an int class id or a multi-hot list; ``task_id`` an int from 0. The file may also be an
    object ``{"class_names": [...], "samples": [...]}``. Single-label classes are re-indexed in task
    order (a class must belong to one task); multi-hot manifests must already list their classes in
    task order, tasks of equal size, and a sample's primary label is its first positive in its task.
    """
    obj = read_json_file(path, "CMML manifest")
    names: list[str] | None = None
    if isinstance(obj, dict):
        if not isinstance(obj.get("samples"), list):
            raise DataError(f"{path}: expected a JSON list of samples or an object with a 'samples' list")
        names = obj.get("class_names")
        obj = obj["samples"]
    if not isinstance(obj, list) or not obj:
        raise DataError(f"{path}: expected a non-empty JSON list of {{image, text, label, task_id, split}}")
    entries = []
    for n, e in enumerate(obj):
        where = f"{path}: entry {n}"
        if not isinstance(e, dict):
            raise DataError(f"{where}: expected an object, got {type(e).__name__}")
        absent = [k for k in ("image", "text", "label", "task_id", "split") if k not in e]
        if absent:
            raise DataError(f"{where}: missing field(s) {absent}")
        if not isinstance(e["task_id"], int) or isinstance(e["task_id"], bool) or e["task_id"] < 0:
            raise DataError(f"{where}: 'task_id' must be a non-negative int, got {e['task_id']!r}")
        if not isinstance(e["image"], str):
            raise DataError(f"{where}: 'image' must be a path string, got {e['image']!r}")
        entries.append((where, e, split_of(e["split"], where), join_text(e["text"], where)))
    multi = isinstance(entries[0][1]["label"], list)
    tasks = sorted({e["task_id"] for _, e, _, _ in entries})
    if tasks != list(range(len(tasks))):
        raise DataError(f"{path}: task ids must be 0..T-1 without gaps, got {tasks}")
    num_tasks = len(tasks)
    records: list[Record] = []
    if multi:
        width = len(entries[0][1]["label"])
        if width % num_tasks:
            raise DataError(f"{path}: {width} multi-hot classes cannot form {num_tasks} tasks of equal size")
        per = width // num_tasks
        for where, e, split, text in entries:
            lab = e["label"]
            if not (isinstance(lab, list) and len(lab) == width and all(v in (0, 1) for v in lab)):
                raise DataError(f"{where}: 'label' must be a {width}-long multi-hot list of 0/1 like entry 0")
            own = [c for c in range(e["task_id"] * per, (e["task_id"] + 1) * per) if lab[c]]
            labels = (own[0], *[c for c, v in enumerate(lab) if v and c != own[0]]) if own else ()
            records.append(Record(split, where, image_root / e["image"], text, labels, e["image"]))
        order, offsets, num_classes = list(range(width)), [t * per for t in range(num_tasks + 1)], width
    else:
        task_of: dict[int, int] = {}
        for where, e, split, text in entries:
            lab = e["label"]
            if not isinstance(lab, int) or isinstance(lab, bool) or lab < 0:
                raise DataError(f"{where}: 'label' must be a non-negative int class id like entry 0, got {lab!r}")
            if task_of.setdefault(lab, e["task_id"]) != e["task_id"]:
                raise DataError(f"{where}: class {lab} is in task {e['task_id']} here and in task {task_of[lab]} "
                                "earlier; a class belongs to one task")
            records.append(Record(split, where, image_root / e["image"], text, (lab,), e["image"]))
        num_classes = max(task_of) + 1
        unused = sorted(set(range(num_classes)) - set(task_of))
        if unused:
            raise DataError(f"{path}: class ids must be 0..C-1; no sample has class(es) {unused[:10]}")
        order = sorted(range(num_classes), key=lambda c: (task_of[c], c))
        offsets = [0]
        for t in range(num_tasks):
            offsets.append(offsets[-1] + sum(1 for c in order if task_of[c] == t))
    if names is None:
        names = [f"class{c}" for c in range(num_classes)]
    elif not (isinstance(names, list) and len(names) == num_classes and all(isinstance(s, str) for s in names)):
        raise DataError(f"{path}: 'class_names' must list {num_classes} strings")
    return CmmlManifest(records, num_classes, "multi" if multi else "single", order, offsets, list(names))


class _Skips:
    """Counts of left-out samples per split and reason, with the first sources of each."""

    def __init__(self, policy: str):
        self.policy = policy
        self.counts: dict[str, dict[str, int]] = {s: {} for s in SPLITS}
        self.examples: dict[str, dict[str, list[str]]] = {s: {} for s in SPLITS}

    def bad(self, rec: Record, reason: str, detail: str = "") -> None:
        """Fail naming the sample, or count it (``detail`` goes into the error only: it may hold addresses)."""
        if self.policy == "fail":
            raise DataError(f"{rec.source}: {reason}{f' ({detail})' if detail else ''} (benchmark.on_bad_sample: "
                            "fail; 'skip' leaves such samples out and counts them in the manifest)")
        self.counts[rec.split][reason] = self.counts[rec.split].get(reason, 0) + 1
        ex = self.examples[rec.split].setdefault(reason, [])
        if len(ex) < EXAMPLES:
            ex.append(rec.source)

    def record(self) -> dict[str, Any]:
        return {s: {"total": sum(self.counts[s].values()), "by_reason": self.counts[s], "examples": self.examples[s]}
                for s in SPLITS}


def encode_image(blob: bytes, size: int, resize: str) -> bytes:
    """PNG bytes of the RGB image ``blob`` resized (bicubic) to ``size`` squared (``square``) or as ViLT does
    with shorter side ``size`` (``vilt``, :func:`cmml.data.vilt_input.vilt_size`); OSError/ValueError if undecodable."""
    from PIL import Image

    from cmml.data.vilt_input import vilt_size

    with Image.open(io.BytesIO(blob)) as img:
        img.load()
        rgb = img.convert("RGB")
        h, w = (size, size) if resize == "square" else vilt_size(rgb.height, rgb.width, size)
        if not (h and w):
            raise ValueError(f"a {rgb.width}x{rgb.height} image is too elongated for ViLT's resize at {size}")
        rgb = rgb.resize((w, h), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    rgb.save(buf, format="PNG", compress_level=1)  # lossless either way; level 1 encodes ~3x faster than 6
    return buf.getvalue()


def _converted(records: Iterable[Record], size: int, resize: str, skips: _Skips,
               digest: Any) -> Iterator[tuple[Record, bytes]]:
    last: tuple[Any, bytes] | None = None  # consecutive records of one image (a film's plots) share its PNG
    for rec in records:
        if rec.split not in SPLITS:
            raise DataError(f"{rec.source}: unknown split {rec.split!r}; expected one of {list(SPLITS)}")
        if rec.text is None or not rec.text.strip():
            skips.bad(rec, "no text")
            continue
        if not rec.labels:
            skips.bad(rec, "no label among the used classes")
            continue
        if isinstance(rec.image, bytes):
            blob = rec.image
        elif rec.image is not None and Path(rec.image).is_file():
            blob = Path(rec.image).read_bytes()
        else:
            skips.bad(rec, "image file not found", str(rec.image))
            continue
        try:
            png = last[1] if last is not None and last[0] == rec.image else encode_image(blob, size, resize)
        except (OSError, ValueError, SyntaxError) as exc:
            skips.bad(rec, "unreadable image", f"{type(exc).__name__}: {exc}")
            continue
        last = (rec.image, png)
        digest.update(f"{rec.split}|{rec.source_id}|{hashlib.sha256(blob).hexdigest()}\n".encode())
        yield rec, png


def _write_splits(out: Path, records: Iterable[Record], size: int, resize: str, skips: _Skips, digest: Any,
                  grouped: bool) -> dict[str, int]:
    """Stream the converted records into one parquet file per split (row groups of ``ROW_GROUP``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fields = [("sample_id", pa.string()), ("image", pa.binary()), ("text", pa.string()),
              ("labels", pa.list_(pa.int64())), ("primary", pa.int64()), ("source_id", pa.string())]
    if grouped:
        fields.append(("group", pa.string()))
    schema = pa.schema(fields)
    writers = {s: pq.ParquetWriter(out / f"{s}.parquet", schema, compression="zstd") for s in SPLITS}
    rows: dict[str, list[tuple[Any, ...]]] = {s: [] for s in SPLITS}
    counts = dict.fromkeys(SPLITS, 0)

    def flush(split: str) -> None:
        if rows[split]:
            cols = list(zip(*rows[split]))
            writers[split].write_table(pa.table([list(c) for c in cols], schema=schema), row_group_size=ROW_GROUP)
            rows[split] = []

    try:
        for rec, png in _converted(records, size, resize, skips, digest):
            row = (f"{rec.split}-{counts[rec.split]:06d}", png, rec.text, list(rec.labels), rec.labels[0], rec.source_id)
            rows[rec.split].append((*row, rec.group or rec.source_id) if grouped else row)
            counts[rec.split] += 1
            if len(rows[rec.split]) == ROW_GROUP:
                flush(rec.split)
        for split in SPLITS:
            flush(split)
    finally:
        for w in writers.values():
            w.close()
    return counts


def convert(out: Path, bench: dict[str, Any], bench_id: str, records: Iterable[Record], *, class_names: list[str],
            label_type: str, sources: dict[str, Path], layout: str, task_policy: dict[str, Any] | None = None,
            grouped: bool = False, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the prepared format of ``records`` into ``out``; return the manifest (also ``out/manifest.json``).

    ``sources`` names the index files read (their sha256 goes into the manifest); ``task_policy``
    tells the tasks stage how classes form tasks (docs/data.md §6); ``grouped`` writes the ``group``
    column, so the missing stage draws one code per group.
    """
    from cmml.data.tokenizer import load_tokenizer

    num_classes = len(class_names)
    if bench["num_classes"] != num_classes:
        raise ConfigError(f"params.yaml: key 'benchmark.num_classes' is {bench['num_classes']}, but the {bench['name']} "
                          f"data ({layout} layout) has {num_classes} classes; set it to {num_classes}")
    vocab = vocab_path(bench)
    if not vocab.is_file():
        raise DataError(f"{vocab}: vocabulary not found (benchmark.vocab must name the backbone's vocab.txt or its "
                        "model directory; cmml tokenises with the model's own WordPiece vocabulary)")
    shutil.copyfile(vocab, out / VOCAB_FILE)
    tokenizer = load_tokenizer(out / VOCAB_FILE, bench["max_text_len"])
    skips, digest = _Skips(bench["on_bad_sample"]), hashlib.sha256()
    counts = _write_splits(out, records, bench["image_size"], bench["image_resize"], skips, digest, grouped)
    empty = [s for s in SPLITS if not counts[s]]
    if empty:
        raise DataError(f"{', '.join(str(p) for p in sources.values())}: no usable sample in split(s) {empty} ({layout} layout); "
                        f"skipped: {skips.record()}")
    import pyarrow.parquet as pq

    splits, text_stats = {}, {}
    for split in SPLITS:
        path = out / f"{split}.parquet"
        splits[split] = {"file": path.name, "count": counts[split], "sha256": hash_file(path)["sha256"]}
        text_stats[split] = tokenizer.stats(pq.read_table(path, columns=["text"]).column("text").to_pylist())
    words = [w for w in (out / VOCAB_FILE).read_text(encoding="utf-8").split("\n") if w]
    manifest = {
        "benchmark": bench_id, "name": bench["name"], "layout": layout, "num_classes": num_classes,
        "class_names": list(class_names), "label_type": label_type, "modalities": ["image", "text"],
        "image_size": bench["image_size"], "image_resize": bench["image_resize"], "splits": splits, "grouped": grouped,
        "vocab": {"file": VOCAB_FILE, "sha256": hash_file(out / VOCAB_FILE)["sha256"], "size": len(words),
                  "source": str(bench["vocab"])},
        "text": {"max_text_len": bench["max_text_len"], **text_stats},
        "skipped": skips.record(), "on_bad_sample": bench["on_bad_sample"],
        "sources": {name: hash_file(p)["sha256"] for name, p in sorted(sources.items())},
        "images_sha256": digest.hexdigest(),
        **({"task_policy": task_policy} if task_policy is not None else {}), **(extra or {}),
    }
    write_json(out / "manifest.json", manifest)
    return manifest
