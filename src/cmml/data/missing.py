"""Stage ``missing``: per (task, split) tables of missing-modality codes (0 complete, 1 text, 2 image).

The draw is MAP's (docs/data.md §1, docs/rebq.md §2.4): ``int(N*ratio)`` distinct rows
are sampled; type text gives them code 1, image code 2, both code 1 and then ``int(k*both_ratio)``
of those same rows code 2. As in MAP, nothing is drawn when ratio is 0. Train tables use the
setting's ``train`` block, val and test tables its ``test`` block.

Seeding (docs/rebq.md §6.7 lists why MAP/RebQ's cached tables are not reproducible):
- default: each table has its own ``random.Random`` seeded from sha256("seed|benchmark|task|split"),
  so a table depends only on its own inputs;
- ``missing.map_compat: true``: Python's global ``random`` is seeded once with the run seed and the
  tables are drawn in the order task 0 train, val, test, task 1 train, ... so that, with one task,
  the draws equal MAP's ``random.seed(seed)`` followed by its train, val, test tables. The global
  state is restored afterwards.

Each table is a CSV (sample_id,code) whose name carries every input; ``index.json`` records per
table its inputs, row count, code counts and sha256.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cmml.data.tasks import TaskSplit, load_tasks, read_json, read_manifest, read_table
from cmml.errors import ConfigError, DataError
from cmml.pipeline.atomic import write_json
from cmml.provenance.sidecar import stage_run

if TYPE_CHECKING:
    from cmml.pipeline.stage import Stage

SPLITS = ("train", "val", "test")
INDEX = "index.json"


def draw_map(n: int, ratio: float, mtype: str, both_ratio: float, rng: random.Random | Any) -> list[int]:
    """MAP's missing table for ``n`` rows drawn with ``rng`` (a ``random.Random`` or the ``random`` module)."""
    if mtype not in ("text", "image", "both"):
        raise ConfigError(f"missing type must be text, image or both, got {mtype!r}")
    if not (0.0 <= ratio <= 1.0 and 0.0 <= both_ratio <= 1.0):
        raise ConfigError(f"missing ratio and both_ratio must lie in [0, 1], got {ratio} and {both_ratio}")
    table = [0] * n
    if ratio > 0:
        drawn = rng.sample(range(n), int(n * ratio))
        for i in drawn:
            table[i] = 2 if mtype == "image" else 1
        if mtype == "both":
            for i in rng.sample(drawn, int(len(drawn) * both_ratio)):
                table[i] = 2
    return table


def table_name(bench: str, task: int, split: str, mtype: str, ratio: float, both_ratio: float, seed: int, n: int) -> str:
    """CSV file name holding every input of the table."""
    return f"{bench}_task{task}_{split}_missing_{mtype}_{ratio:.2f}_both{both_ratio:.2f}_seed{seed}_n{n}.csv"


def local_rng(seed: int, bench: str, task: int, split: str) -> random.Random:
    """The default mode's per-table generator."""
    digest = hashlib.sha256(f"{seed}|{bench}|{task}|{split}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _csv(sample_ids: list[str], codes: list[int]) -> bytes:
    return ("sample_id,code\n" + "".join(f"{s},{c}\n" for s, c in zip(sample_ids, codes))).encode("utf-8")


def split_task_ids(data_dir: Path, manifest: dict[str, Any], tsplit: TaskSplit,
                   split: str) -> tuple[list[str], np.ndarray, list[str] | None]:
    """Sample ids of a split (parquet row order), the task of each row and, for grouped data, each row's group."""
    grouped = bool(manifest.get("grouped"))
    table = read_table(data_dir, split, manifest, columns=["sample_id", "primary", *(["group"] if grouped else [])])
    primary = table.column("primary").to_numpy()
    groups = table.column("group").to_pylist() if grouped else None
    return table.column("sample_id").to_pylist(), tsplit.tasks_of(tsplit.remap[primary]), groups


def draw_grouped(groups: list[str], ratio: float, mtype: str, both_ratio: float, rng: random.Random | Any) -> list[int]:
    """MAP's table drawn over the distinct groups (first-appearance order), each row taking its group's code.

    All plots of a film thus share one code, and the share of films missing a modality equals the
    setting's ratio (docs/data.md §1.2).
    """
    unique = list(dict.fromkeys(groups))
    codes = dict(zip(unique, draw_map(len(unique), ratio, mtype, both_ratio, rng)))
    return [codes[g] for g in groups]


def run(stage: Stage, params: dict[str, Any]) -> None:
    """Stage ``missing --setting S --seed K``: every (task, split) table plus index.json."""
    setting, seed = stage.args["setting"], int(stage.args["seed"])
    cfg = params["settings"][setting]
    map_compat = bool(params["missing"]["map_compat"])
    data_dir, tasks_dir = Path(stage.deps[0]), Path(stage.deps[1])
    manifest = read_manifest(data_dir)
    bench = manifest["benchmark"]
    tsplit = load_tasks(tasks_dir)
    rows = {split: split_task_ids(data_dir, manifest, tsplit, split) for split in SPLITS}
    mode = "map_compat" if map_compat else "local"
    entries = []
    saved = random.getstate()
    try:
        with stage_run(stage, params, seed=seed, extra={"setting": setting, "mode": mode}) as sr:
            out = sr.tmp(stage.outs[0])
            if map_compat:
                random.seed(seed)
            for task in range(tsplit.num_tasks):
                for split in SPLITS:
                    block = cfg["train" if split == "train" else "test"]
                    mtype, ratio, both = block["type"], float(block["ratio"]), float(cfg["both_ratio"])
                    ids_all, tasks, groups = rows[split]
                    keep = np.flatnonzero(tasks == task)
                    ids = [ids_all[i] for i in keep]
                    rng = random if map_compat else local_rng(seed, bench, task, split)
                    if groups is None:
                        codes = draw_map(len(ids), ratio, mtype, both, rng)
                    else:
                        codes = draw_grouped([groups[i] for i in keep], ratio, mtype, both, rng)
                    name = table_name(bench, task, split, mtype, ratio, both, seed, len(ids))
                    blob = _csv(ids, codes)
                    (out / name).write_bytes(blob)
                    entries.append({"task": task, "split": split, "file": name, "n": len(ids), "type": mtype,
                                    "ratio": ratio, "both_ratio": both, "seed": seed, "mode": mode,
                                    "sha256": hashlib.sha256(blob).hexdigest(),
                                    "counts": {str(c): codes.count(c) for c in (0, 1, 2)}})
            write_json(out / INDEX, {"benchmark": bench, "setting": setting, "seed": seed, "mode": mode, "tables": entries})
    finally:
        random.setstate(saved)


def load_codes(missing_dir: Path, task: int, split: str, sample_ids: list[str]) -> np.ndarray:
    """int64 codes aligned to ``sample_ids``, from the verified table of (task, split)."""
    missing_dir = Path(missing_dir)
    index = read_json(missing_dir / INDEX, ("tables",), "missing-table index")
    entry = next((e for e in index["tables"] if e.get("task") == task and e.get("split") == split), None)
    if entry is None:
        raise DataError(f"{missing_dir / INDEX}: no table for task {task}, split {split!r}")
    path = missing_dir / entry["file"]
    if not path.is_file():
        raise DataError(f"{path}: missing-modality table not found (listed in {missing_dir / INDEX})")
    blob = path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != entry["sha256"]:
        raise DataError(f"{path}: sha256 differs from the one recorded in {missing_dir / INDEX}; the table was altered")
    lines = blob.decode("utf-8").splitlines()
    if lines[:1] != ["sample_id,code"]:
        raise DataError(f"{path}: expected the header 'sample_id,code'")
    ids, codes = [], []
    for line in lines[1:]:
        sid, _, code = line.rpartition(",")
        ids.append(sid)
        codes.append(int(code))
    if ids != list(sample_ids):
        raise DataError(f"{path}: its {len(ids)} sample ids do not match the {len(sample_ids)} rows of task {task}, "
                        f"split {split!r} in the data (table drawn for different data; re-run the missing stage)")
    return np.asarray(codes, dtype=np.int64)
