"""The class -> task split (stage ``tasks``) and the verified readers of the prepared data.

The classes are permuted with a recorded seed and cut into contiguous, balanced tasks; every
class gets a NEW id so that task t owns the contiguous ids [offsets[t], offsets[t+1]), the layout
RebQ's trainer assumes (docs/rebq.md §2.1-2.2, docs/data.md §3). A
sample belongs to the task of its remapped primary label.

The manifest and split readers live here (not in prepare.py) because every stage that reads the
data runs this file; they check each parquet file against the sha256 the manifest records.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cmml.errors import DataError
from cmml.pipeline.atomic import write_json
from cmml.provenance.hashing import hash_file
from cmml.provenance.sidecar import stage_run

if TYPE_CHECKING:
    import pyarrow as pa

    from cmml.pipeline.stage import Stage

MANIFEST = "manifest.json"
TASKS_FILE = "tasks.json"
MANIFEST_KEYS = ("benchmark", "num_classes", "class_names", "label_type", "image_size", "splits", "vocab")


def read_json(path: Path, keys: tuple[str, ...], what: str) -> dict[str, Any]:
    """A JSON object from ``path`` holding ``keys``; DataError naming the file otherwise."""
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: {what} is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: {what} must be a JSON object")
    absent = [k for k in keys if k not in obj]
    if absent:
        raise DataError(f"{path}: {what} lacks key(s) {absent}")
    return obj


def read_manifest(data_dir: Path) -> dict[str, Any]:
    """The manifest written by the prepare stage."""
    return read_json(Path(data_dir) / MANIFEST, MANIFEST_KEYS, "data manifest")


def verified_file(data_dir: Path, record: dict[str, Any], what: str) -> Path:
    """Path of a manifest-listed file after checking it exists and matches the recorded sha256."""
    path = Path(data_dir) / record["file"]
    if not path.is_file():
        raise DataError(f"{path}: {what} not found (listed in {Path(data_dir) / MANIFEST})")
    digest = hash_file(path)["sha256"]
    if digest != record["sha256"]:
        raise DataError(f"{path}: sha256 {digest} differs from {record['sha256']} recorded in "
                        f"{Path(data_dir) / MANIFEST}; the file was altered or the manifest is stale (re-run prepare)")
    return path


def read_table(data_dir: Path, split: str, manifest: dict[str, Any], columns: list[str] | None = None) -> pa.Table:
    """A split's parquet table (optionally some columns), verified against the manifest."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if split not in manifest["splits"]:
        raise DataError(f"{Path(data_dir) / MANIFEST}: no split {split!r}; has {sorted(manifest['splits'])}")
    rec = manifest["splits"][split]
    path = verified_file(data_dir, rec, f"{split} split")
    try:
        table = pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: cannot read parquet: {exc}") from None
    if table.num_rows != rec["count"]:
        raise DataError(f"{path}: {table.num_rows} rows, manifest records {rec['count']}")
    return table


@dataclass(frozen=True)
class TaskSplit:
    """Classes in task order; new id = position in ``class_order``; task t owns [offsets[t], offsets[t+1])."""

    num_tasks: int
    num_classes: int
    class_order: list[int]
    class_names: list[str]
    offsets: list[int]

    def task_range(self, t: int) -> range:
        """New class ids of task ``t``."""
        return range(self.offsets[t], self.offsets[t + 1])

    @property
    def remap(self) -> np.ndarray:
        """int64 array: original class id -> new class id."""
        out = np.empty(self.num_classes, dtype=np.int64)
        out[np.asarray(self.class_order, dtype=np.int64)] = np.arange(self.num_classes)
        return out

    def task_of(self, new_id: int) -> int:
        """Task owning the new class id ``new_id``."""
        if not 0 <= new_id < self.num_classes:
            raise IndexError(f"class id {new_id} outside [0, {self.num_classes})")
        return int(np.searchsorted(self.offsets, new_id, side="right")) - 1

    def tasks_of(self, new_ids: np.ndarray) -> np.ndarray:
        """Vectorised :meth:`task_of` (int64 array)."""
        return np.searchsorted(np.asarray(self.offsets), np.asarray(new_ids), side="right").astype(np.int64) - 1

    def seen(self, t: int) -> int:
        """Number of classes seen after task ``t`` (= offsets[t+1])."""
        return self.offsets[t + 1]


def split_classes(num_classes: int, num_tasks: int, order_seed: int) -> tuple[list[int], list[int]]:
    """Seeded class order and balanced task offsets (remainder classes go to the first tasks)."""
    order = np.random.default_rng(order_seed).permutation(num_classes)
    base, extra = divmod(num_classes, num_tasks)
    offsets = [0]
    for t in range(num_tasks):
        offsets.append(offsets[-1] + base + (t < extra))
    return [int(c) for c in order], offsets


def policy_split(manifest: dict[str, Any], where: Path, num_tasks: int, order_seed: int) -> tuple[list[int], list[int]]:
    """Class order and offsets: the manifest's ``task_policy`` when it has one (docs/data.md §6), else seeded.

    A policy with ``offsets`` fixes the tasks (their number must equal ``num_tasks``); one with only
    ``class_order`` keeps that order and cuts it into ``num_tasks`` balanced contiguous tasks.
    """
    policy = manifest.get("task_policy")
    if policy is None:
        return split_classes(int(manifest["num_classes"]), num_tasks, order_seed)
    order = [int(c) for c in policy["class_order"]]
    if "offsets" not in policy:
        return order, split_classes(len(order), num_tasks, order_seed)[1]
    offsets = [int(o) for o in policy["offsets"]]
    if len(offsets) != num_tasks + 1:
        raise DataError(f"{where}: the data define {len(offsets) - 1} tasks ({policy['rule']}), but tasks.num_tasks is "
                        f"{num_tasks}; set tasks.num_tasks: {len(offsets) - 1}")
    return order, offsets


def load_tasks(tasks_dir: Path) -> TaskSplit:
    """The task split written by the tasks stage, checked for internal consistency."""
    path = Path(tasks_dir) / TASKS_FILE
    rec = read_json(path, ("num_tasks", "num_classes", "class_order", "class_names", "offsets"), "task split")
    split = TaskSplit(int(rec["num_tasks"]), int(rec["num_classes"]), list(rec["class_order"]),
                      list(rec["class_names"]), list(rec["offsets"]))
    c, t = split.num_classes, split.num_tasks
    if (sorted(split.class_order) != list(range(c)) or len(split.class_names) != c or len(split.offsets) != t + 1
            or split.offsets[0] != 0 or split.offsets[-1] != c or any(a >= b for a, b in zip(split.offsets, split.offsets[1:]))):
        raise DataError(f"{path}: inconsistent task split (class_order must permute 0..{c - 1}, offsets must rise "
                        f"strictly from 0 to {c} in {t + 1} steps)")
    return split


def run(stage: Stage, params: dict[str, Any]) -> None:
    """Stage ``tasks``: write tasks.json for the prepared benchmark."""
    data_dir = Path(stage.deps[0])
    manifest = read_manifest(data_dir)
    num_tasks, order_seed = params["tasks"]["num_tasks"], params["tasks"]["order_seed"]
    num_classes = int(manifest["num_classes"])
    if manifest["label_type"] == "binary":
        raise DataError(f"{data_dir / MANIFEST}: {manifest['benchmark']} is a binary benchmark; its two classes cannot "
                        "be split into class-incremental tasks, so the continual families exclude it (docs/data.md §3.4)")
    if num_tasks > num_classes:
        raise DataError(f"{data_dir / MANIFEST}: {num_classes} classes cannot fill tasks.num_tasks={num_tasks} tasks")
    order, offsets = policy_split(manifest, data_dir / MANIFEST, num_tasks, order_seed)
    record = {
        "benchmark": manifest["benchmark"], "num_tasks": num_tasks, "order_seed": order_seed, "num_classes": num_classes,
        "class_order": order, "class_names": [manifest["class_names"][c] for c in order], "offsets": offsets,
        **({"rule": manifest["task_policy"]["rule"]} if "task_policy" in manifest else {}),
    }
    with stage_run(stage, params, seed=order_seed, extra={"num_tasks": num_tasks, "offsets": offsets}) as sr:
        write_json(sr.tmp(stage.outs[0]) / TASKS_FILE, record)
