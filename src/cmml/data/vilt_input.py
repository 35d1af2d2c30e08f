"""ViLT's own input pipeline without torchvision: aspect-preserving resize, normalisation, padding with a
pixel mask, and the interpolation of the text position embeddings (docs/data.md §7.1).

- :func:`vilt_size`: the shorter side goes to ``shortest_edge`` (384), the longer side is capped at
  ``int(1333 / 800 * shortest_edge)`` (639 for 384), both rounded to the nearest integer and then
  down to a multiple of ``size_divisor`` (32): the rule of transformers' ``ViltImageProcessor``.
- :func:`vilt_pixels`: bicubic resize (PIL), scale to [0, 1], normalise with mean = std = 0.5.
- :func:`pad_batch`: pad a list of [3, H, W] images with zeros at the bottom and right to the
  batch's largest height and width; the pixel mask is 1 on real pixels and 0 on padding.
- :func:`interpolate_positions`: MAP's stretch of the 40 pretrained text positions to a longer
  text length (bilinear, corners aligned, over the position axis only).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch
    from PIL import Image

SHORTEST_EDGE = 384
SIZE_DIVISOR = 32
MEAN = STD = 0.5


def vilt_size(height: int, width: int, shortest_edge: int = SHORTEST_EDGE,
              size_divisor: int = SIZE_DIVISOR) -> tuple[int, int]:
    """(height, width) ViLT resizes an image of ``height`` x ``width`` to."""
    longest = int(1333 / 800 * shortest_edge)
    scale = shortest_edge / min(height, width)
    h, w = (shortest_edge, scale * width) if height < width else (scale * height, shortest_edge)
    if max(h, w) > longest:
        cap = longest / max(h, w)
        h, w = cap * h, cap * w
    h, w = int(h + 0.5), int(w + 0.5)
    return h // size_divisor * size_divisor, w // size_divisor * size_divisor


def vilt_pixels(image: Image.Image, shortest_edge: int = SHORTEST_EDGE, size_divisor: int = SIZE_DIVISOR) -> np.ndarray:
    """float32 [3, H, W]: the RGB image resized (bicubic) as ViLT does and normalised to [-1, 1]."""
    from PIL import Image as PILImage

    rgb = image if image.mode == "RGB" else image.convert("RGB")
    h, w = vilt_size(rgb.height, rgb.width, shortest_edge, size_divisor)
    arr = np.asarray(rgb.resize((w, h), PILImage.Resampling.BICUBIC), dtype=np.float32) * np.float32(1 / 255)
    return ((arr - MEAN) / STD).transpose(2, 0, 1).copy()


def pad_batch(images: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels [B, 3, Hmax, Wmax] (zero padding at bottom/right) and int64 pixel mask [B, Hmax, Wmax]."""
    import torch

    hmax = max(int(im.shape[1]) for im in images)
    wmax = max(int(im.shape[2]) for im in images)
    pixels = images[0].new_zeros(len(images), 3, hmax, wmax)
    mask = torch.zeros(len(images), hmax, wmax, dtype=torch.int64)
    for i, im in enumerate(images):
        pixels[i, :, :im.shape[1], :im.shape[2]] = im
        mask[i, :im.shape[1], :im.shape[2]] = 1
    return pixels, mask


def interpolate_positions(weight: torch.Tensor, length: int) -> torch.Tensor:
    """[length, D] text position embeddings stretched from ``weight`` [P, D] (bilinear, align_corners)."""
    import torch.nn.functional as F

    d = weight.shape[1]
    return F.interpolate(weight.detach().float()[None, None], size=(length, d), mode="bilinear",
                         align_corners=True)[0, 0].to(weight.dtype)
