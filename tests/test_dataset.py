"""In-memory splits and batches: decoding, tokenising, remapping, codes, dummies, integrity, speed."""

from __future__ import annotations

import io
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from PIL import Image

from cmml.cli import main
from cmml.data.dataset import Batch, SplitData, load_split
from cmml.data.missing import load_codes
from cmml.data.tasks import load_tasks
from cmml.data.tokenizer import TextTokenizer, load_tokenizer
from cmml.errors import DataError

REPO = Path(__file__).resolve().parents[1]
DATA, TASKS, MISS = Path("data"), Path("tasks"), Path("missing/both70/seed0")  # under runs/<benchmark id>


def build(root: Path, **bench: Any) -> Path:
    """Run prepare, tasks and missing(both70, seed 0) in ``root``; return its runs/<benchmark id>."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["benchmark"].update(bench)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert main(["prepare"]) == 0 and main(["tasks"]) == 0
        assert main(["missing", "--setting", "both70", "--seed", "0"]) == 0
    finally:
        os.chdir(cwd)
    return root / "runs" / ("embedded-multi" if bench.get("variant") == "multi" else "embedded")


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 classes, 5 tasks; the train split has 2,000 rows (the speed target)."""
    return build(tmp_path_factory.mktemp("single"), per_class={"pretrain": 2, "train": 100, "val": 4, "test": 6})


@pytest.fixture(scope="module")
def multi(tmp_path_factory: pytest.TempPathFactory) -> Path:
    bench = {"variant": "multi", "num_classes": 8, "per_class": {"pretrain": 2, "train": 10, "val": 3, "test": 5}}
    return build(tmp_path_factory.mktemp("multi"), **bench)


@pytest.fixture
def tok(single: Path) -> TextTokenizer:
    return load_tokenizer(single / DATA / "vocab.txt", 32)


def load(root: Path, split: str, tok: TextTokenizer, **kw: Any) -> SplitData:
    return load_split(root / DATA, root / TASKS, split, tok, **kw)


def test_load_split_contents(single: Path, tok: TextTokenizer) -> None:
    t0 = time.perf_counter()
    d = load(single, "train", tok, missing_dir=single / MISS)
    elapsed = time.perf_counter() - t0
    print(f"\nload_split: {len(d)} samples in {elapsed:.3f} s")
    assert len(d) == 2000 and elapsed < 1.0
    table = pq.read_table(single / DATA / "train.parquet")
    assert d.sample_ids == table.column("sample_id").to_pylist()
    assert d.images.dtype == torch.uint8 and tuple(d.images.shape) == (2000, 3, 32, 32)
    first = np.array(Image.open(io.BytesIO(table.column("image")[0].as_py())))
    assert torch.equal(d.images[0], torch.from_numpy(first).permute(2, 0, 1))
    assert d.input_ids.dtype == d.attention_mask.dtype == torch.int64 and tuple(d.input_ids.shape) == (2000, 32)
    assert torch.equal(d.input_ids[:3], tok.encode(table.column("text").to_pylist()[:3])[0])
    ts = load_tasks(single / TASKS)
    primary = ts.remap[table.column("primary").to_numpy()]
    assert not d.multilabel and d.num_classes == 20 and d.labels.dtype == torch.int64
    assert d.labels.tolist() == d.primary.tolist() == primary.tolist()
    assert d.tasks.tolist() == [ts.task_of(int(p)) for p in primary]
    for t in range(5):
        rows = (d.tasks == t).nonzero().flatten()
        assert d.codes[rows].tolist() == load_codes(single / MISS, t, "train", [d.sample_ids[i] for i in rows]).tolist()
    assert d.codes.bincount().tolist() == [600, 700, 700]
    assert d.empty_ids.tolist()[:3] == [2, 3, 0] and d.empty_mask.sum().item() == 2


def test_task_filter_and_pretrain_without_codes(single: Path, tok: TextTokenizer) -> None:
    d = load(single, "test", tok, task_ids=[1, 3], missing_dir=single / MISS)
    ts = load_tasks(single / TASKS)
    assert set(d.tasks.tolist()) == {1, 3} and len(d) == 6 * 8
    assert all(p in ts.task_range(1) or p in ts.task_range(3) for p in d.primary.tolist())
    p = load(single, "pretrain", tok)
    assert len(p) == 40 and p.codes.eq(0).all()
    with pytest.raises(DataError, match="no table"):
        load(single, "pretrain", tok, missing_dir=single / MISS)


def test_batch_applies_dummies_and_trims_text(single: Path, tok: TextTokenizer) -> None:
    d = load(single, "val", tok, missing_dir=single / MISS)
    assert set(d.codes.tolist()) == {0, 1, 2}
    b = d.batch(torch.arange(len(d)))
    assert isinstance(b, Batch) and len(b) == len(d)
    img, txt, full = d.codes == 2, d.codes == 1, d.codes == 0
    assert b.pixel_values.dtype == torch.float32 and torch.all(b.pixel_values[img] == 1.0)
    assert torch.allclose(b.pixel_values[full], (d.images[full].float() / 255 - 0.5) / 0.5)
    assert b.pixel_values.min() >= -1.0 and b.pixel_values.max() <= 1.0
    length = b.input_ids.shape[1]
    assert length == int(d.attention_mask[~txt].sum(1).max()) < 32
    assert torch.equal(b.input_ids[txt], b.empty_ids.expand(int(txt.sum()), -1))
    assert torch.equal(b.attention_mask[txt], b.empty_mask.expand(int(txt.sum()), -1))
    assert torch.equal(b.input_ids[~txt], d.input_ids[~txt][:, :length])
    assert b.empty_ids.shape == (length,) and b.empty_ids[:2].tolist() == [2, 3]
    assert torch.equal(d.input_ids[txt][:, :length], d.input_ids[txt][:, :length])  # the split itself is untouched
    assert b.to("cpu").labels.tolist() == b.labels.tolist()


def test_batches_subset_and_with_codes(single: Path, tok: TextTokenizer) -> None:
    d = load(single, "test", tok, missing_dir=single / MISS)
    ordered = list(d.batches(32, shuffle=False))
    assert [len(b) for b in ordered] == [32, 32, 32, 24]
    assert torch.cat([b.labels for b in ordered]).tolist() == d.labels.tolist()
    runs = [torch.cat([b.labels for b in d.batches(32, True, torch.Generator().manual_seed(3))]) for _ in range(2)]
    assert torch.equal(runs[0], runs[1]) and sorted(runs[0].tolist()) == sorted(d.labels.tolist())
    assert not torch.equal(runs[0], d.labels)
    sub = d.subset(torch.tensor([5, 1, 7]))
    assert sub.sample_ids == [d.sample_ids[i] for i in (5, 1, 7)] and torch.equal(sub.images[1], d.images[1])
    assert len(d.subset(d.tasks == 0)) == int((d.tasks == 0).sum())
    complete = d.with_codes(torch.zeros(len(d), dtype=torch.int64))
    assert complete.codes.eq(0).all() and d.codes.ne(0).any()
    with pytest.raises(DataError, match="codes"):
        d.with_codes(torch.full((len(d),), 3))


def test_multilabel_split(multi: Path) -> None:
    tok = load_tokenizer(multi / DATA / "vocab.txt", 32)
    d = load(multi, "train", tok, missing_dir=multi / MISS)
    table = pq.read_table(multi / DATA / "train.parquet")
    remap = load_tasks(multi / TASKS).remap
    assert d.multilabel and d.labels.dtype == torch.float32 and tuple(d.labels.shape) == (80, 8)
    for row, labs in enumerate(table.column("labels").to_pylist()):
        assert sorted(d.labels[row].nonzero().flatten().tolist()) == sorted(remap[labs].tolist())
        assert d.labels[row, d.primary[row]] == 1.0
    assert d.labels.sum(1).max() > 1
    b = d.batch(torch.arange(4))
    assert tuple(b.labels.shape) == (4, 8)


def test_corrupt_or_missing_parquet_is_a_data_error(single: Path, tok: TextTokenizer, tmp_path: Path) -> None:
    root = tmp_path / "embedded"
    shutil.copytree(single, root)
    val = root / DATA / "val.parquet"
    val.write_bytes(val.read_bytes()[:200])
    with pytest.raises(DataError, match="val.parquet.*sha256"):
        load(root, "val", tok)
    val.unlink()
    with pytest.raises(DataError, match="val.parquet.*not found"):
        load(root, "val", tok)
    with pytest.raises(DataError, match="manifest.json.*no split 'dev'"):
        load(root, "dev", tok)
