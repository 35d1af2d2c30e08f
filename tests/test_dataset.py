"""Lazily read splits and their batches: decoding per batch, caching, workers, presence masks,
fill policies, tokenising, remapping, codes, integrity, speed."""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from PIL import Image

from cmml.cli import main
from cmml.data import dataset
from cmml.data.dataset import Batch, ImageStore, Loading, SplitData, load_split
from cmml.data.missing import load_codes
from cmml.data.modality import codes_to_present
from cmml.data.tasks import load_tasks
from cmml.data.tokenizer import TextTokenizer, load_tokenizer
from cmml.errors import ConfigError, DataError
from cmml.provenance.hashing import hash_file

REPO = Path(__file__).resolve().parents[1]
DATA, TASKS, MISS = Path("prepared"), Path("tasks"), Path("missing/both70/seed0")  # under runs/data/<benchmark id>


def build(root: Path, **bench: Any) -> Path:
    """Run prepare, tasks and missing(both70, seed 0) in ``root``; return its runs/data/<benchmark id>."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["benchmark"].update(bench)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert main(["run", "data/prepare"]) == 0 and main(["run", "data/tasks"]) == 0
        assert main(["run", "data/missing/both70/seed0"]) == 0
    finally:
        os.chdir(cwd)
    return root / "runs/data" / ("embedded-multi" if bench.get("variant") == "multi" else "embedded")


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 classes, 5 tasks; the train split has 2,000 rows (the speed target)."""
    return build(tmp_path_factory.mktemp("single"), per_class={"pretrain": 2, "train": 100, "val": 4, "test": 6})


@pytest.fixture(scope="module")
def multi(tmp_path_factory: pytest.TempPathFactory) -> Path:
    bench = {"variant": "multi", "max_text_len": 25, "num_classes": 8, "per_class": {"pretrain": 2, "train": 10, "val": 3, "test": 5}}
    return build(tmp_path_factory.mktemp("multi"), **bench)


@pytest.fixture
def tok(single: Path) -> TextTokenizer:
    return load_tokenizer(single / DATA / "vocab.txt", 32)


def load(root: Path, split: str, tok: TextTokenizer, **kw: Any) -> SplitData:
    return load_split(root / DATA, root / TASKS, split, tok, **kw)


def decoded(root: Path, split: str) -> torch.Tensor:
    """uint8 [N,3,H,W]: every image of the split decoded directly with PIL (the reference)."""
    blobs = pq.read_table(root / DATA / f"{split}.parquet").column("image").to_pylist()
    return torch.stack([torch.from_numpy(np.array(Image.open(io.BytesIO(b)).convert("RGB"))).permute(2, 0, 1)
                        for b in blobs])


def normalised(images: torch.Tensor) -> torch.Tensor:
    return images.float().div_(127.5).sub_(1.0)


def same(a: Batch, b: Batch) -> bool:
    """Every field equal: same dtypes, shapes and values (absent pixel masks on both sides)."""
    def eq(x: torch.Tensor | None, y: torch.Tensor | None) -> bool:
        return x is None and y is None or x is not None and y is not None and x.dtype == y.dtype and torch.equal(x, y)
    return a.modalities == b.modalities and all(eq(getattr(a, f.name), getattr(b, f.name))
                                                for f in fields(Batch) if f.name != "modalities")


def rewrite(root: Path, split: str, edit: Callable[[pa.Table], pa.Table], **write: Any) -> Path:
    """Replace a split's parquet file by ``edit(table)`` (written with ``write``); record its sha256."""
    path = root / DATA / f"{split}.parquet"
    pq.write_table(edit(pq.read_table(path)), path, **write)
    manifest = json.loads((root / DATA / "manifest.json").read_text())
    manifest["splits"][split]["sha256"] = hash_file(path)["sha256"]
    (root / DATA / "manifest.json").write_text(json.dumps(manifest))
    return path


def test_load_split_contents(single: Path, tok: TextTokenizer) -> None:
    t0 = time.perf_counter()
    d = load(single, "train", tok, missing_dir=single / MISS)
    elapsed = time.perf_counter() - t0
    print(f"\nload_split: {len(d)} samples in {elapsed:.3f} s")
    assert len(d) == 2000 and elapsed < 1.0
    table = pq.read_table(single / DATA / "train.parquet")
    assert d.sample_ids == table.column("sample_id").to_pylist() and d.rows.tolist() == list(range(2000))
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
    assert d.modalities == ("image", "text") and d.present.dtype == torch.bool and tuple(d.present.shape) == (2000, 2)
    assert torch.equal(d.present, codes_to_present(d.codes))
    assert d.fill.name == "map" and d.fill.ids.tolist()[:3] == [2, 3, 0] and d.fill.mask.sum().item() == 2
    r = int(d.present[:, 0].nonzero()[0])
    first = torch.from_numpy(np.array(Image.open(io.BytesIO(table.column("image")[r].as_py())))).permute(2, 0, 1)
    assert torch.equal(d.batch(torch.tensor([r])).pixel_values[0], normalised(first))


def test_images_are_read_per_batch_only_when_present_and_cached(single: Path, tok: TextTokenizer,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = dataset.decode_image

    def counting(blob: bytes, size: int, where: Path, row: int) -> torch.Tensor:
        calls.append(row)
        return real(blob, size, where, row)

    monkeypatch.setattr(dataset, "decode_image", counting)
    image_bytes = pq.read_table(single / DATA / "train.parquet", columns=["image"]).nbytes
    before = pa.total_allocated_bytes()
    big = load(single, "train", tok, missing_dir=single / MISS)
    assert calls == [] and pa.total_allocated_bytes() - before < image_bytes / 20  # no image read at load
    del big
    d = load(single, "val", tok, missing_dir=single / MISS)
    has_image = d.present[:, 0]
    first = next(d.batches(16, shuffle=False))
    assert calls == [r for r in range(16) if has_image[r]]  # this batch only, missing images never read
    ref = normalised(decoded(single, "val"))
    assert torch.equal(first.pixel_values[has_image[:16]], ref[:16][has_image[:16]])
    assert list(d.batches(16, shuffle=False))
    n = int(has_image.sum())
    assert sorted(calls) == has_image.nonzero().flatten().tolist()  # each image decoded once
    list(d.batches(16, True, torch.Generator().manual_seed(1)))
    full = d.subset(torch.arange(len(d))).batch(torch.arange(len(d)))  # subsets share the cache
    assert len(calls) == n and torch.equal(full.pixel_values[has_image], ref[has_image])
    uncached = load(single, "val", tok, missing_dir=single / MISS, loading=Loading(cache_mb=0))
    for _ in range(2):
        list(uncached.batches(16, shuffle=False))
    assert len(calls) == 3 * n  # cache_mb 0: every pass decodes again


def test_num_workers_give_identical_batches(single: Path, tok: TextTokenizer) -> None:
    d = load(single, "val", tok, missing_dir=single / MISS)

    def two_epochs(data: SplitData) -> list[Batch]:
        gen = torch.Generator().manual_seed(5)
        return [b for _ in range(2) for b in data.batches(16, shuffle=True, generator=gen)]

    rng = torch.get_rng_state()
    runs = [two_epochs(replace(d, loading=Loading(num_workers=w))) for w in (0, 2)]
    assert torch.equal(torch.get_rng_state(), rng)  # the DataLoader draws nothing from the global RNG
    assert [len(b) for b in runs[0]] == [16] * 10 and len(runs[1]) == 10
    assert all(same(a, b) for a, b in zip(*runs))
    order = torch.randperm(len(d), generator=torch.Generator().manual_seed(5))
    assert same(runs[0][0], d.batch(order[:16]))  # the caller's generator alone sets the order
    assert not same(runs[0][0], runs[0][5])


def test_batch_applies_map_fill_and_trims_text(single: Path, tok: TextTokenizer) -> None:
    d = load(single, "val", tok, missing_dir=single / MISS)
    assert set(d.codes.tolist()) == {0, 1, 2}
    b = d.batch(torch.arange(len(d)))
    assert isinstance(b, Batch) and len(b) == len(d)
    img, txt, full = d.codes == 2, d.codes == 1, d.codes == 0
    assert b.pixel_values.dtype == torch.float32 and torch.all(b.pixel_values[img] == 1.0)
    ref = decoded(single, "val")
    assert torch.allclose(b.pixel_values[full], (ref[full].float() / 255 - 0.5) / 0.5)
    assert b.pixel_values.min() >= -1.0 and b.pixel_values.max() <= 1.0
    assert b.empty_pixels.shape == (3, 32, 32) and b.empty_pixels.eq(1.0).all()
    length = b.input_ids.shape[1]
    assert length == int(d.attention_mask[~txt].sum(1).max()) < 32
    assert torch.equal(b.input_ids[txt], b.empty_ids.expand(int(txt.sum()), -1))
    assert torch.equal(b.attention_mask[txt], b.empty_mask.expand(int(txt.sum()), -1))
    assert torch.equal(b.input_ids[~txt], d.input_ids[~txt][:, :length])
    assert b.empty_ids.shape == (length,) and b.empty_ids[:2].tolist() == [2, 3]
    assert torch.equal(d.input_ids, tok.encode(pq.read_table(single / DATA / "val.parquet").column("text")
                                                .to_pylist())[0])  # the split itself is untouched
    assert b.to("cpu").labels.tolist() == b.labels.tolist()


def test_zeros_fill(single: Path, tok: TextTokenizer) -> None:
    m = load(single, "val", tok, missing_dir=single / MISS)
    z = load(single, "val", tok, missing_dir=single / MISS, fill="zeros")
    bm, bz = m.batch(torch.arange(len(m))), z.batch(torch.arange(len(z)))
    img, txt = ~m.present[:, 0], ~m.present[:, 1]
    assert torch.all(bz.pixel_values[img] == 0.0) and torch.equal(bz.pixel_values[~img], bm.pixel_values[~img])
    length = bz.input_ids.shape[1]
    assert length == bm.input_ids.shape[1]  # the longest present text sets it under both policies
    assert torch.all(bz.input_ids[txt] == 0) and bz.attention_mask[txt].tolist() == [[1] + [0] * (length - 1)] * int(txt.sum())
    assert torch.equal(bz.input_ids[~txt], bm.input_ids[~txt]) and torch.equal(bz.labels, bm.labels)
    assert bz.empty_pixels.eq(0.0).all() and bz.empty_ids.eq(0).all() and bz.empty_mask.tolist() == [1] + [0] * (length - 1)
    no_text = torch.full((len(z),), 1)
    assert z.with_codes(no_text).batch(torch.arange(3)).attention_mask.tolist() == [[1]] * 3
    assert m.with_codes(no_text).batch(torch.arange(3)).attention_mask.tolist() == [[1, 1]] * 3
    with pytest.raises(ConfigError, match=r"data.fill must be one of \['map', 'zeros'\], got 'noise'"):
        load(single, "val", tok, fill="noise")


def test_presence_masks(single: Path, tok: TextTokenizer) -> None:
    d = load(single, "val", tok, missing_dir=single / MISS)
    b = d.batch(torch.arange(len(d)))
    assert b.modalities == d.modalities == ("image", "text") and b.present.dtype == torch.bool
    assert torch.equal(b.present, d.present) and torch.equal(b.codes, d.codes)
    none = d.with_present(torch.zeros_like(d.present))  # every modality missing: a mask, no code
    nb = none.batch(torch.arange(3))
    assert nb.pixel_values.eq(1.0).all() and torch.equal(nb.input_ids, nb.empty_ids.expand(3, -1))
    for holder in (none, nb):
        with pytest.raises(DataError, match="miss every modality"):
            holder.codes
    with pytest.raises(DataError, match=r"presence must be a bool tensor \(80, 2\)"):
        d.with_present(torch.ones(len(d), 3, dtype=torch.bool))


def test_batches_subset_and_with_codes(single: Path, tok: TextTokenizer) -> None:
    d = load(single, "test", tok, missing_dir=single / MISS)
    ordered = list(d.batches(32, shuffle=False))
    assert [len(b) for b in ordered] == [32, 32, 32, 24]
    assert torch.cat([b.labels for b in ordered]).tolist() == d.labels.tolist()
    runs = [torch.cat([b.labels for b in d.batches(32, True, torch.Generator().manual_seed(3))]) for _ in range(2)]
    assert torch.equal(runs[0], runs[1]) and sorted(runs[0].tolist()) == sorted(d.labels.tolist())
    assert not torch.equal(runs[0], d.labels)
    idx = torch.tensor([5, 1, 7])
    sub = d.subset(idx)
    assert sub.sample_ids == [d.sample_ids[i] for i in (5, 1, 7)] and sub.rows.tolist() == [5, 1, 7]
    assert same(sub.batch(torch.arange(3)), d.batch(idx))
    assert len(d.subset(d.tasks == 0)) == int((d.tasks == 0).sum())
    complete = d.with_codes(torch.zeros(len(d), dtype=torch.int64))
    assert complete.codes.eq(0).all() and d.codes.ne(0).any() and complete.present.all()
    with pytest.raises(DataError, match="codes"):
        d.with_codes(torch.full((len(d),), 3))
    with pytest.raises(DataError, match=r"codes must have shape \(120,\)"):
        d.with_codes(torch.zeros(3, dtype=torch.int64))
    assert list(d.subset(torch.tensor([], dtype=torch.int64)).batches(8, shuffle=True)) == []


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


def test_bad_image_is_a_data_error_naming_file_and_row(single: Path, tok: TextTokenizer, tmp_path: Path) -> None:
    root = tmp_path / "embedded"
    shutil.copytree(single, root)
    small = io.BytesIO()
    Image.new("RGB", (16, 16)).save(small, format="PNG")

    def corrupt(table: pa.Table) -> pa.Table:
        images = table.column("image").to_pylist()
        images[3], images[5] = b"not an image", small.getvalue()
        return table.set_column(table.schema.get_field_index("image"), "image", pa.array(images, pa.binary()))

    rewrite(root, "val", corrupt)
    d = load(root, "val", tok)  # lazily: loading reads no image
    assert len(d.batch(torch.tensor([0, 1, 2]))) == 3
    with pytest.raises(DataError, match=r"val.parquet: row 3 holds an undecodable image"):
        d.batch(torch.tensor([3]))
    with pytest.raises(DataError, match=r"val.parquet: row 5 image is 16x16, manifest says 32x32"):
        list(d.subset(torch.tensor([4, 5])).batches(2, shuffle=False))  # the parquet row, not the subset position
    with pytest.raises(DataError, match=r"val.parquet: row 3 holds an undecodable image"):
        list(replace(d, loading=Loading(num_workers=2)).batches(8, shuffle=False))  # raised in a worker
    codes = torch.zeros(len(d), dtype=torch.int64)
    codes[[3, 5]] = 2
    assert d.with_codes(codes).batch(torch.tensor([3, 5])).pixel_values.eq(1.0).all()  # missing: never read


def test_images_read_per_row_group_with_a_bounded_cache(single: Path, tok: TextTokenizer, tmp_path: Path) -> None:
    root = tmp_path / "embedded"
    shutil.copytree(single, root)
    path = rewrite(root, "val", lambda table: table, row_group_size=16)
    assert pq.read_metadata(path).num_row_groups == 5
    ref = decoded(root, "val")
    store = ImageStore(path, 32, cache_bytes=1)
    order = torch.randperm(len(ref), generator=torch.Generator().manual_seed(0)).tolist()
    assert all(torch.equal(store.image(r), ref[r]) for r in order)
    assert len(store._groups._items) == len(store._images._items) == 1  # only the newest entry stays
    grouped, whole = load(root, "val", tok, missing_dir=root / MISS), load(single, "val", tok, missing_dir=single / MISS)
    assert same(grouped.batch(torch.arange(len(whole))), whole.batch(torch.arange(len(whole))))


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
