"""Splits read lazily, and their batches: decoded images, token ids, remapped labels, modality masks.

A :class:`SplitData` holds only small per-row arrays in memory: labels, tasks, modality presence
and token ids. Texts are tokenised once at load (the Rust tokenizer does a split in milliseconds
and ids take ``max_len`` int64s per row), so DataLoader workers do not repeat it every epoch.
Images stay PNG bytes in the parquet file: an :class:`ImageStore` reads them per row group
(memory-mapped file, only the ``image`` column) and decodes them per batch; encoded row groups and
decoded images are cached, each up to ``runtime.cache_mb`` MiB per split and process, least
recently used first out. The image of a sample whose image is missing is never read. A split
larger than memory therefore trains, provided its parquet row groups are bounded (a shuffled
batch reads the row group of each of its rows unless cached).

Batches come from a :class:`torch.utils.data.DataLoader` over the split: a ``BatchSampler`` over
one order drawn in the calling process (``torch.randperm`` with the caller's generator, as before)
and :meth:`SplitData.collate`. With ``runtime.num_workers > 0`` workers decode in parallel; the
batches and their order are the same for any number of workers.

Modality presence is a bool mask ``[N, M]`` over ``modalities`` (:mod:`cmml.data.modality`);
MAP's codes (0 complete, 1 text missing, 2 image missing) are its two-modality view. The fill
policy (``data.fill``) says what a missing input becomes in a batch:

- ``map`` (MAP and RebQ): a missing image is all ones after normalisation to [-1, 1]; a missing
  text is the tokenised empty string, ``[CLS] [SEP]`` then ``[PAD]``, attention mask 1 on the two.
- ``zeros``: a missing image is all zeros after normalisation (mid-grey); a missing text is
  ``[PAD]`` (id 0) at every position with attention mask 1 at position 0 only (the [CLS] position
  whose output the model reads) and 0 elsewhere.
"""

from __future__ import annotations

import io
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import BatchSampler, DataLoader, Dataset

from cmml.config import FILL_POLICIES
from cmml.data.missing import load_codes
from cmml.data.modality import MAP_MODALITIES, codes_to_present, present_to_codes
from cmml.data.tasks import load_tasks, read_manifest, read_table
from cmml.data.tokenizer import PAD_ID, TextTokenizer
from cmml.data.vilt_input import pad_batch
from cmml.errors import ConfigError, DataError


@dataclass
class Batch:
    """One batch, fill applied; the text length is trimmed to the longest sequence in it."""

    pixel_values: torch.Tensor  # float32 [B,3,H,W] in [-1, 1]; image missing -> empty_pixels
    input_ids: torch.Tensor  # int64 [B,L]; text missing -> empty_ids
    attention_mask: torch.Tensor  # int64 [B,L]; text missing -> empty_mask
    labels: torch.Tensor  # int64 [B] (single-label) or float32 [B,C] multi-hot, remapped ids
    present: torch.Tensor  # bool [B,M]: modality modalities[m] of sample b is present
    tasks: torch.Tensor  # int64 [B]
    empty_ids: torch.Tensor  # int64 [L]: the missing-text fill
    empty_mask: torch.Tensor  # int64 [L]
    empty_pixels: torch.Tensor  # float32 [3,H,W]: the missing-image fill
    modalities: tuple[str, ...]  # column names of ``present``
    pixel_mask: torch.Tensor | None = None  # int64 [B,H,W], 1 = real pixel; variable-size images only (None: fixed size)
    empty_pixel_mask: torch.Tensor | None = None  # int64 [H,W]: the missing-image fill's pixel mask

    @property
    def codes(self) -> torch.Tensor:
        """int64 [B] MAP codes (0 complete, 1 text missing, 2 image missing); DataError if a sample has neither."""
        return present_to_codes(self.present, self.modalities)

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Batch:
        tensors = {f.name: getattr(self, f.name) for f in fields(self)
                   if f.name != "modalities" and getattr(self, f.name) is not None}
        return replace(self, **{name: fn(t) for name, t in tensors.items()})

    def to(self, device: torch.device | str) -> Batch:
        """The batch on ``device`` (copies from pinned memory are asynchronous)."""
        return self._map(lambda t: t.to(device, non_blocking=t.is_pinned()))

    def rows(self, index: torch.Tensor) -> Batch:
        """The samples at ``index`` (the fills are shared, the text length is kept)."""
        per_row = ("pixel_values", "input_ids", "attention_mask", "labels", "present", "tasks",
                   *(("pixel_mask",) if self.pixel_mask is not None else ()))
        return replace(self, **{name: getattr(self, name)[index.to(getattr(self, name).device)] for name in per_row})

    def pin_memory(self) -> Batch:
        """The batch in page-locked memory (called by the DataLoader when ``pin_memory``)."""
        return self._map(torch.Tensor.pin_memory)

    def __len__(self) -> int:
        return int(self.present.shape[0])


@dataclass(frozen=True)
class Fill:
    """A fill policy: what a missing image and a missing text become (see the module docstring)."""

    name: str
    pixels: torch.Tensor  # float32 [3,H,W], normalised
    ids: torch.Tensor  # int64 [max_len]
    mask: torch.Tensor  # int64 [max_len]

    @classmethod
    def make(cls, name: str, tokenizer: TextTokenizer, image_size: int) -> Fill:
        """Policy ``name`` (``map`` or ``zeros``) for ``tokenizer``'s length and ``image_size`` images."""
        if name == "map":
            ids, mask = tokenizer.encode([""])
            return cls(name, torch.ones(3, image_size, image_size), ids[0], mask[0])
        if name == "zeros":
            mask = torch.zeros(tokenizer.max_len, dtype=torch.int64)
            mask[0] = 1
            return cls(name, torch.zeros(3, image_size, image_size),
                       torch.full((tokenizer.max_len,), PAD_ID, dtype=torch.int64), mask)
        raise ConfigError(f"data.fill must be one of {list(FILL_POLICIES)}, got {name!r}")


@dataclass(frozen=True)
class Loading:
    """How batches are produced, never what they hold: DataLoader workers, pinned memory, cache size."""

    num_workers: int = 0
    pin_memory: bool = False
    cache_mb: int = 256  # per split and process: encoded row groups, and separately decoded images

    @classmethod
    def from_runtime(cls, runtime: dict[str, Any], device: torch.device) -> Loading:
        """``runtime.num_workers`` and ``runtime.cache_mb``; pinned memory when computing on CUDA."""
        return cls(int(runtime["num_workers"]), device.type == "cuda", int(runtime["cache_mb"]))


class _LRU:
    """Least-recently-used cache bounded by its values' bytes; the newest entry always stays."""

    def __init__(self, budget: int):
        self.budget, self.used = budget, 0
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()

    def get(self, key: Hashable) -> Any:
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[0]

    def put(self, key: Hashable, value: Any, nbytes: int) -> None:
        self._items[key] = (value, nbytes)
        self.used += nbytes
        while self.used > self.budget and len(self._items) > 1:
            self.used -= self._items.popitem(last=False)[1][1]


def decode_image(blob: bytes, size: int | None, where: Path, row: int) -> torch.Tensor:
    """uint8 [3,size,size] of encoded image bytes (any size when ``size`` is None); DataError naming
    ``where`` and ``row`` otherwise."""
    try:
        img = Image.open(io.BytesIO(blob))
        pixels = np.array(img if img.mode == "RGB" else img.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{where}: row {row} holds an undecodable image: {exc}") from None
    if size is not None and pixels.shape != (size, size, 3):
        raise DataError(f"{where}: row {row} image is {pixels.shape[1]}x{pixels.shape[0]}, manifest says {size}x{size}")
    return torch.from_numpy(pixels).permute(2, 0, 1)


class ImageStore:
    """The images of one parquet file (column ``image``), read and decoded lazily by parquet row.

    The file is opened per row-group read, so a store is safe to use in forked DataLoader
    workers; each process has its own caches (``cache_bytes`` of encoded row groups and as many of
    decoded images; the row group just read always stays).
    """

    def __init__(self, path: Path, size: int | None, cache_bytes: int):
        import pyarrow.parquet as pq

        self.path, self.size, self.cache_bytes = Path(path), size, cache_bytes
        meta = pq.read_metadata(self.path)
        self.starts = np.cumsum([0, *(meta.row_group(g).num_rows for g in range(meta.num_row_groups))])
        self._groups, self._images = _LRU(cache_bytes), _LRU(cache_bytes)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (spawned workers) without the caches."""
        return {**self.__dict__, "_groups": _LRU(self.cache_bytes), "_images": _LRU(self.cache_bytes)}

    def image(self, row: int) -> torch.Tensor:
        """uint8 [3,H,W] image of parquet row ``row``."""
        img = self._images.get(row)
        if img is None:
            group = int(np.searchsorted(self.starts, row, side="right")) - 1
            column = self._groups.get(group)
            if column is None:
                column = self._read_group(group)
                self._groups.put(group, column, column.nbytes)
            img = decode_image(column[row - int(self.starts[group])].as_py(), self.size, self.path, row)
            self._images.put(row, img, img.numel())
        return img

    def _read_group(self, group: int) -> Any:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            with pq.ParquetFile(self.path, memory_map=True) as f:
                return f.read_row_group(group, columns=["image"]).column(0).combine_chunks()
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{self.path}: cannot read the images of row group {group}: {exc}") from None


@dataclass(eq=False)
class SplitData(Dataset):
    """A split (or a subset of its rows): per-row arrays in memory, images read per batch.

    As a :class:`~torch.utils.data.Dataset`, item ``i`` is ``(i, image)`` with the decoded image,
    or None when the sample's image is missing; :meth:`collate` turns items into a :class:`Batch`.
    """

    sample_ids: list[str]
    rows: torch.Tensor  # int64 [N]: row in the parquet file
    images: ImageStore
    input_ids: torch.Tensor  # int64 [N,max_len]
    attention_mask: torch.Tensor  # int64 [N,max_len]
    labels: torch.Tensor  # int64 [N] or float32 [N,C]
    primary: torch.Tensor  # int64 [N], remapped
    tasks: torch.Tensor  # int64 [N]
    present: torch.Tensor  # bool [N,M]
    modalities: tuple[str, ...]
    multilabel: bool
    num_classes: int
    fill: Fill
    loading: Loading
    variable_size: bool = False  # images keep ViLT's per-image size: batches are padded with a pixel mask

    def __len__(self) -> int:
        return len(self.sample_ids)

    @property
    def codes(self) -> torch.Tensor:
        """int64 [N] MAP codes of :attr:`present` (0 complete, 1 text missing, 2 image missing)."""
        return present_to_codes(self.present, self.modalities)

    def subset(self, idx: torch.Tensor) -> SplitData:
        """Rows ``idx`` (index tensor or boolean mask)."""
        idx = torch.as_tensor(idx)
        if idx.dtype == torch.bool:
            idx = idx.nonzero().flatten()
        return replace(self, sample_ids=[self.sample_ids[i] for i in idx.tolist()], rows=self.rows[idx],
                       input_ids=self.input_ids[idx], attention_mask=self.attention_mask[idx], labels=self.labels[idx],
                       primary=self.primary[idx], tasks=self.tasks[idx], present=self.present[idx])

    def with_present(self, present: torch.Tensor) -> SplitData:
        """The same rows with another modality presence (bool [N,M])."""
        present = torch.as_tensor(present)
        if present.dtype != torch.bool or present.shape != self.present.shape:
            raise DataError(f"presence must be a bool tensor {tuple(self.present.shape)}, "
                            f"got {present.dtype} {tuple(present.shape)}")
        return replace(self, present=present.clone())

    def with_codes(self, codes: torch.Tensor) -> SplitData:
        """The same rows with other MAP codes (e.g. a simulated or a fixed setting)."""
        codes = torch.as_tensor(codes)
        if codes.shape != (len(self),):
            raise DataError(f"codes must have shape ({len(self)},), got {tuple(codes.shape)}")
        return self.with_present(codes_to_present(codes, self.modalities))

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None]:
        has_image = bool(self.present[i, self.modalities.index("image")])
        return i, self.images.image(int(self.rows[i])) if has_image else None

    def collate(self, items: list[tuple[int, torch.Tensor | None]]) -> Batch:
        """The batch of ``items`` (from :meth:`__getitem__`), fill applied, text trimmed."""
        idx = torch.tensor([i for i, _ in items], dtype=torch.int64)
        present = self.present[idx]
        pixel_mask = empty_pixels = empty_pixel_mask = None
        if self.variable_size:
            images = [self.fill.pixels if img is None else img.float().div_(127.5).sub_(1.0) for _, img in items]
            pixels, masks = pad_batch([self.fill.pixels, *images])  # the canvas always holds the fill
            empty_pixels, empty_pixel_mask, pixels, pixel_mask = pixels[0], masks[0], pixels[1:], masks[1:]
        else:
            pixels = self.fill.pixels.expand(len(items), -1, -1, -1).clone()
            has_image = torch.tensor([img is not None for _, img in items], dtype=torch.bool)
            if bool(has_image.any()):
                pixels[has_image] = torch.stack([img for _, img in items if img is not None]).float().div_(127.5).sub_(1.0)
        ids, mask = self.input_ids[idx], self.attention_mask[idx]  # copies
        text_missing = ~present[:, self.modalities.index("text")]
        ids[text_missing] = self.fill.ids
        mask[text_missing] = self.fill.mask
        length = max(int(mask.sum(1).max()) if len(items) else 0, int(self.fill.mask.sum()))
        return Batch(pixel_values=pixels, input_ids=ids[:, :length].contiguous(),
                     attention_mask=mask[:, :length].contiguous(), labels=self.labels[idx], present=present,
                     tasks=self.tasks[idx], empty_ids=self.fill.ids[:length].clone(),
                     empty_mask=self.fill.mask[:length].clone(),
                     empty_pixels=self.fill.pixels if empty_pixels is None else empty_pixels, modalities=self.modalities,
                     pixel_mask=pixel_mask, empty_pixel_mask=empty_pixel_mask)

    def batch(self, idx: torch.Tensor) -> Batch:
        """Rows ``idx`` as one batch, in this process."""
        return self.collate([self[i] for i in torch.as_tensor(idx, dtype=torch.int64).tolist()])

    def batches(self, batch_size: int, shuffle: bool, generator: torch.Generator | None = None) -> Iterator[Batch]:
        """Consecutive batches over all rows (the last may be smaller), shuffled with ``generator`` if asked.

        The DataLoader gets a generator of its own: it draws a worker seed from it, which must not
        consume the global RNG (dropout and other training randomness).
        """
        order = torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        yield from DataLoader(self, batch_sampler=BatchSampler(order.tolist(), batch_size, drop_last=False),
                              collate_fn=self.collate, num_workers=self.loading.num_workers,
                              pin_memory=self.loading.pin_memory, generator=torch.Generator())


def load_split(data_dir: Path, tasks_dir: Path, split: str, tokenizer: TextTokenizer, *,
               task_ids: list[int] | None = None, missing_dir: Path | None = None, fill: str = "map",
               loading: Loading = Loading()) -> SplitData:
    """A split's rows of ``task_ids`` (all tasks if None), presence from ``missing_dir`` (all present if None).

    Reads the per-row columns only; images are read and decoded per batch (see the module docstring).
    """
    data_dir, tasks_dir = Path(data_dir), Path(tasks_dir)
    manifest = read_manifest(data_dir)
    tsplit = load_tasks(tasks_dir)
    if tsplit.num_classes != manifest["num_classes"]:
        raise DataError(f"{tasks_dir / 'tasks.json'}: {tsplit.num_classes} classes, but {data_dir / 'manifest.json'} "
                        f"has {manifest['num_classes']} (re-run the tasks stage)")
    multilabel = manifest["label_type"] == "multi"
    size = int(manifest["image_size"])
    variable = manifest.get("image_resize") == "vilt"
    fill_policy = Fill.make(fill, tokenizer, size)
    columns = ["sample_id", "text", "primary"] + (["labels"] if multilabel else [])
    table = read_table(data_dir, split, manifest, columns=columns)  # not the images
    remap = tsplit.remap
    original = table.column("primary").to_numpy()
    if len(original) and int(original.max()) >= len(remap):
        raise DataError(f"{data_dir / manifest['splits'][split]['file']}: the {split} split holds classes outside the "
                        f"{len(remap)} continual classes (the pretrain split is read by cmml.models.pretrain)")
    primary = remap[original]
    tasks = tsplit.tasks_of(primary)
    keep = np.arange(len(primary)) if task_ids is None else np.flatnonzero(np.isin(tasks, task_ids))
    table = table.take(keep)
    primary, tasks = primary[keep], tasks[keep]
    sample_ids = table.column("sample_id").to_pylist()
    ids, mask = tokenizer.encode(table.column("text").to_pylist())
    num_classes = tsplit.num_classes
    if multilabel:
        labels = torch.zeros(len(keep), num_classes, dtype=torch.float32)
        for row, labs in enumerate(table.column("labels").to_pylist()):
            labels[row, torch.from_numpy(remap[labs])] = 1.0
    else:
        labels = torch.from_numpy(primary.copy())
    codes = np.zeros(len(keep), dtype=np.int64)
    if missing_dir is not None:
        for t in np.unique(tasks).tolist():
            rows = np.flatnonzero(tasks == t)
            codes[rows] = load_codes(Path(missing_dir), t, split, [sample_ids[i] for i in rows])
    store = ImageStore(data_dir / manifest["splits"][split]["file"], None if variable else size, loading.cache_mb * 2**20)
    return SplitData(sample_ids=sample_ids, rows=torch.from_numpy(keep.astype(np.int64)), images=store, input_ids=ids,
                     attention_mask=mask, labels=labels, primary=torch.from_numpy(primary.copy()),
                     tasks=torch.from_numpy(tasks.copy()), present=codes_to_present(torch.from_numpy(codes)),
                     modalities=MAP_MODALITIES, multilabel=multilabel, num_classes=num_classes, fill=fill_policy,
                     loading=loading, variable_size=variable)
