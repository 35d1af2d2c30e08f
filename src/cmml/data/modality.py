"""Per-sample modality presence: a boolean mask over a benchmark's modalities, and MAP's codes.

Presence is a BoolTensor ``[..., M]`` whose columns follow ``modalities`` (e.g. ``("image", "text")``;
audio or video would be further columns). MAP's missing tables store the two-modality view as
codes, unchanged on disk: 0 complete, 1 text missing, 2 image missing. A sample missing every
modality has a mask but no code.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cmml.errors import DataError

MAP_MODALITIES = ("image", "text")
COMPLETE, TEXT_MISSING, IMAGE_MISSING = 0, 1, 2


def _map_columns(modalities: Sequence[str]) -> tuple[int, int]:
    """Columns of image and text; DataError unless ``modalities`` are exactly those two."""
    if sorted(modalities) != sorted(MAP_MODALITIES):
        raise DataError(f"MAP codes describe the modalities {MAP_MODALITIES}, not {tuple(modalities)}")
    return list(modalities).index("image"), list(modalities).index("text")


def codes_to_present(codes: torch.Tensor, modalities: Sequence[str] = MAP_MODALITIES) -> torch.Tensor:
    """Bool mask ``[*codes.shape, 2]`` (columns in ``modalities`` order) of MAP codes 0/1/2."""
    codes = torch.as_tensor(codes)
    if codes.dtype.is_floating_point or codes.dtype == torch.bool or bool(((codes < 0) | (codes > 2)).any()):
        raise DataError(f"MAP codes must be integers in {{0, 1, 2}}, got {codes.dtype} values {codes.unique().tolist()[:5]}")
    image, text = _map_columns(modalities)
    present = torch.ones(*codes.shape, 2, dtype=torch.bool, device=codes.device)
    present[..., image] = codes != IMAGE_MISSING
    present[..., text] = codes != TEXT_MISSING
    return present


def present_to_codes(present: torch.Tensor, modalities: Sequence[str] = MAP_MODALITIES) -> torch.Tensor:
    """int64 MAP codes of a ``[..., 2]`` presence mask; DataError if a sample misses both modalities."""
    present = torch.as_tensor(present)
    if present.dtype != torch.bool or present.ndim == 0 or present.shape[-1] != len(modalities):
        raise DataError(f"presence must be a bool tensor [..., {len(modalities)}], got {present.dtype} {tuple(present.shape)}")
    image, text = _map_columns(modalities)
    has_image, has_text = present[..., image], present[..., text]
    neither = ~(has_image | has_text)
    if bool(neither.any()):
        rows = neither.nonzero().tolist()
        raise DataError(f"{len(rows)} sample(s) miss every modality (first at index {rows[0]}); "
                        "MAP codes cannot represent that (only one of image and text may be missing)")
    codes = torch.full(has_image.shape, COMPLETE, dtype=torch.int64, device=present.device)
    codes[~has_text] = TEXT_MISSING
    codes[~has_image] = IMAGE_MISSING
    return codes
