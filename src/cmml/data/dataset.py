"""In-memory splits and batches: decoded images, tokenised texts, remapped labels, missing codes.

A whole split fits in memory as tensors (the embedded benchmark is small), so batching is plain
indexing. The missing-modality dummies are applied per batch from the codes, as MAP and RebQ do
(/work/shared/specs/data.md §1): a missing image becomes an all-ones tensor after normalisation,
a missing text the tokenised empty string.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cmml.data.missing import load_codes
from cmml.data.tasks import load_tasks, read_manifest, read_table
from cmml.data.tokenizer import TextTokenizer
from cmml.errors import DataError

TEXT_MISSING, IMAGE_MISSING = 1, 2


@dataclass
class Batch:
    """One batch, dummies applied; the text length is trimmed to the longest sequence in it."""

    pixel_values: torch.Tensor  # float32 [B,3,H,W] in [-1, 1]; image missing -> all ones
    input_ids: torch.Tensor  # int64 [B,L]; text missing -> tokenised empty text
    attention_mask: torch.Tensor  # int64 [B,L]
    labels: torch.Tensor  # int64 [B] (single-label) or float32 [B,C] multi-hot, remapped ids
    codes: torch.Tensor  # int64 [B]: 0 complete, 1 text missing, 2 image missing
    tasks: torch.Tensor  # int64 [B]
    empty_ids: torch.Tensor  # int64 [L]: tokenised empty text
    empty_mask: torch.Tensor  # int64 [L]

    def to(self, device: torch.device | str) -> Batch:
        """The batch on ``device``."""
        return Batch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def __len__(self) -> int:
        return int(self.codes.shape[0])


@dataclass
class SplitData:
    """A split (or a subset of it) held as tensors, row order = parquet order."""

    sample_ids: list[str]
    images: torch.Tensor  # uint8 [N,3,H,W]
    input_ids: torch.Tensor  # int64 [N,max_len]
    attention_mask: torch.Tensor  # int64 [N,max_len]
    labels: torch.Tensor  # int64 [N] or float32 [N,C]
    primary: torch.Tensor  # int64 [N], remapped
    tasks: torch.Tensor  # int64 [N]
    codes: torch.Tensor  # int64 [N]
    multilabel: bool
    num_classes: int
    empty_ids: torch.Tensor  # int64 [max_len]
    empty_mask: torch.Tensor  # int64 [max_len]

    def __len__(self) -> int:
        return len(self.sample_ids)

    def subset(self, idx: torch.Tensor) -> SplitData:
        """Rows ``idx`` (index tensor or boolean mask)."""
        idx = torch.as_tensor(idx)
        if idx.dtype == torch.bool:
            idx = idx.nonzero().flatten()
        return replace(self, sample_ids=[self.sample_ids[i] for i in idx.tolist()], images=self.images[idx],
                       input_ids=self.input_ids[idx], attention_mask=self.attention_mask[idx], labels=self.labels[idx],
                       primary=self.primary[idx], tasks=self.tasks[idx], codes=self.codes[idx])

    def with_codes(self, codes: torch.Tensor) -> SplitData:
        """The same rows with other missing codes (e.g. a simulated or a fixed setting)."""
        codes = torch.as_tensor(codes, dtype=torch.int64)
        if codes.shape != self.codes.shape or bool(((codes < 0) | (codes > 2)).any()):
            raise DataError(f"codes must be {tuple(self.codes.shape)} values in {{0, 1, 2}}, got shape {tuple(codes.shape)}")
        return replace(self, codes=codes.clone())

    def batch(self, idx: torch.Tensor) -> Batch:
        """Rows ``idx`` as a batch with the dummies applied by code."""
        idx = torch.as_tensor(idx, dtype=torch.int64)
        codes = self.codes[idx]
        pixels = self.images[idx].float().div_(127.5).sub_(1.0)
        pixels[codes == IMAGE_MISSING] = 1.0
        ids, mask = self.input_ids[idx], self.attention_mask[idx]
        text_missing = codes == TEXT_MISSING
        if bool(text_missing.any()):
            ids, mask = ids.clone(), mask.clone()
            ids[text_missing] = self.empty_ids
            mask[text_missing] = self.empty_mask
        length = max(int(mask.sum(1).max()) if len(idx) else 0, int(self.empty_mask.sum()))
        return Batch(pixel_values=pixels, input_ids=ids[:, :length].contiguous(),
                     attention_mask=mask[:, :length].contiguous(), labels=self.labels[idx], codes=codes,
                     tasks=self.tasks[idx], empty_ids=self.empty_ids[:length].clone(),
                     empty_mask=self.empty_mask[:length].clone())

    def batches(self, batch_size: int, shuffle: bool, generator: torch.Generator | None = None) -> Iterator[Batch]:
        """Consecutive batches over all rows (the last may be smaller), shuffled with ``generator`` if asked."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            yield self.batch(order[start:start + batch_size])


def _decode(blobs: list[bytes], size: int, where: Path) -> torch.Tensor:
    out = np.empty((len(blobs), size, size, 3), dtype=np.uint8)
    for i, blob in enumerate(blobs):
        try:
            img = Image.open(io.BytesIO(blob))
            pixels = np.asarray(img if img.mode == "RGB" else img.convert("RGB"))
        except (OSError, ValueError) as exc:
            raise DataError(f"{where}: row {i} holds an undecodable image: {exc}") from None
        if pixels.shape != (size, size, 3):
            raise DataError(f"{where}: row {i} image is {pixels.shape[1]}x{pixels.shape[0]}, manifest says {size}x{size}")
        out[i] = pixels
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def load_split(data_dir: Path, tasks_dir: Path, split: str, tokenizer: TextTokenizer, *,
               task_ids: list[int] | None = None, missing_dir: Path | None = None) -> SplitData:
    """A split's rows of ``task_ids`` (all tasks if None), with codes from ``missing_dir`` (all 0 if None)."""
    data_dir, tasks_dir = Path(data_dir), Path(tasks_dir)
    manifest = read_manifest(data_dir)
    tsplit = load_tasks(tasks_dir)
    if tsplit.num_classes != manifest["num_classes"]:
        raise DataError(f"{tasks_dir / 'tasks.json'}: {tsplit.num_classes} classes, but {data_dir / 'manifest.json'} "
                        f"has {manifest['num_classes']} (re-run the tasks stage)")
    table = read_table(data_dir, split, manifest)
    remap = tsplit.remap
    primary = remap[table.column("primary").to_numpy()]
    tasks = tsplit.tasks_of(primary)
    keep = np.arange(len(primary)) if task_ids is None else np.flatnonzero(np.isin(tasks, task_ids))
    table = table.take(keep)
    primary, tasks = primary[keep], tasks[keep]
    sample_ids = table.column("sample_id").to_pylist()
    where = data_dir / manifest["splits"][split]["file"]
    images = _decode(table.column("image").to_pylist(), int(manifest["image_size"]), where)
    ids, mask = tokenizer.encode(table.column("text").to_pylist())
    multilabel = manifest["label_type"] == "multi"
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
    empty_ids, empty_mask = tokenizer.encode([""])
    return SplitData(sample_ids=sample_ids, images=images, input_ids=ids, attention_mask=mask, labels=labels,
                     primary=torch.from_numpy(primary.copy()), tasks=torch.from_numpy(tasks.copy()),
                     codes=torch.from_numpy(codes), multilabel=multilabel, num_classes=num_classes,
                     empty_ids=empty_ids[0], empty_mask=empty_mask[0])
