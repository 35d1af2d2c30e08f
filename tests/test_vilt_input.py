"""ViLT's input pipeline: cmml's torchvision-free resize/normalise/pad equals transformers' ViLT image
processor (its PIL backend, the one that runs without torchvision); the WordPiece tokenizer really
reads the given vocab; text positions are interpolated as MAP does; the backbone honours a pixel mask."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cmml.data.tokenizer import load_tokenizer
from cmml.data.vilt_input import interpolate_positions, pad_batch, vilt_pixels, vilt_size


def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    shapes = [(100, 150), (300, 90), (384, 384), (50, 700)]  # (height, width)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in shapes]


def test_sizes_follow_vilt_rule() -> None:
    assert vilt_size(100, 150) == (384, 576)
    assert vilt_size(300, 90) == (608, 192)  # the longer side is capped at 639, then floored to 32
    assert vilt_size(384, 384) == (384, 384)
    assert vilt_size(50, 700) == (32, 608)


def test_equals_transformers_vilt_image_processor() -> None:
    try:
        from transformers.models.vilt.image_processing_pil_vilt import ViltImageProcessorPil as Processor
    except ImportError:  # transformers < 5: the processor had only one backend
        from transformers import ViltImageProcessor as Processor
    proc = Processor()
    for img in images():
        ref = proc([img], return_tensors="np")
        ours = vilt_pixels(img)
        assert ours.shape == ref["pixel_values"][0].shape
        np.testing.assert_allclose(ours, ref["pixel_values"][0], rtol=0, atol=1e-6)
    grey = images()[0].convert("L")  # converted to RGB first (the processor itself needs RGB input)
    np.testing.assert_array_equal(vilt_pixels(grey), vilt_pixels(grey.convert("RGB")))
    batch = images()[:3]
    ref = proc(batch, return_tensors="np")
    pixels, mask = pad_batch([torch.from_numpy(vilt_pixels(im)) for im in batch])
    np.testing.assert_allclose(pixels.numpy(), ref["pixel_values"], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(mask.numpy(), ref["pixel_mask"])


def test_tokenizer_reads_the_given_vocab(tmp_path) -> None:
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "zebra", "apple", "##s", "pie"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    ids, mask = load_tokenizer(tmp_path / "vocab.txt", 8).encode_np(["Apples zebra pie unknownword"])
    assert ids[0].tolist() == [2, 6, 7, 5, 8, 1, 3, 0]  # ids are the lines of this file, [UNK] for the rest
    assert mask[0].tolist() == [1, 1, 1, 1, 1, 1, 1, 0]


def test_position_interpolation_keeps_ends_and_is_linear() -> None:
    w = torch.randn(40, 6)
    out = interpolate_positions(w, 512)
    assert out.shape == (512, 6)
    torch.testing.assert_close(out[0], w[0])
    torch.testing.assert_close(out[-1], w[-1])
    x = torch.linspace(0, 39, 512, dtype=torch.float64)  # align_corners: position i sits at i * 39 / 511
    lo = x.floor().long().clamp(max=38)
    w64 = w.double()
    want = w64[lo] + (x - lo)[:, None] * (w64[lo + 1] - w64[lo])
    torch.testing.assert_close(out.double(), want, atol=2e-5, rtol=0)


@pytest.mark.parametrize("sizes", [[(64, 96), (96, 64)], [(64, 64), (32, 96)]])
def test_backbone_honours_pixel_mask_like_transformers(sizes) -> None:
    from cmml.models.backbone import Backbone, new_vilt, tiny_config

    torch.manual_seed(0)
    tiny = {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 64, "patch_size": 16}
    bb = Backbone(new_vilt(tiny_config(30, 12, 64, tiny)).eval())
    pixels, mask = pad_batch([torch.randn(3, h, w) for h, w in sizes])
    ids = torch.randint(5, 30, (2, 7))
    amask = torch.ones(2, 7, dtype=torch.int64)
    amask[1, 5:] = 0
    with torch.no_grad():
        ours = bb(ids, amask, pixels, pixel_mask=mask).hidden[:, :7]
        ref = bb.vilt(input_ids=ids, attention_mask=amask, pixel_values=pixels, pixel_mask=mask).last_hidden_state[:, :7]
        alone = [bb(ids[i:i + 1], amask[i:i + 1], pixels[i:i + 1, :, :h, :w]).hidden[:, :7] for i, (h, w) in enumerate(sizes)]
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours, torch.cat(alone), atol=1e-5, rtol=1e-4)  # padding changes nothing


def test_prepared_vilt_images_batch_like_the_processor(tmp_path) -> None:
    """Prepared with image_resize: vilt, a batch holds the processor's pixels and pixel mask (on a canvas
    that also fits the 64x64 missing-image fill)."""
    from realfixtures import bench_params, user_manifest, vocab
    from transformers.models.vilt.image_processing_pil_vilt import ViltImageProcessorPil

    from cmml.data.benchmarks.manifest import BENCHMARK
    from cmml.data.dataset import load_split
    from cmml.data.tasks import policy_split, read_manifest
    from cmml.pipeline.atomic import write_json

    voc = vocab(tmp_path / "vocab.txt")
    path = user_manifest(tmp_path / "mine")
    bench = bench_params("manifest", tmp_path, voc, manifest=str(path), image_root="", label_type="single",
                         num_classes=4, image_size=64, image_resize="vilt")
    out = tmp_path / "prepared"
    out.mkdir()
    BENCHMARK.prepare(out, bench, "manifest")
    order, offsets = policy_split(read_manifest(out), out, 2, 0)
    write_json(tmp_path / "tasks" / "tasks.json", {"num_tasks": 2, "num_classes": 4, "class_order": order,
                                                  "class_names": ["a", "b", "c", "d"], "offsets": offsets})
    split = load_split(out, tmp_path / "tasks", "train", load_tokenizer(voc, 12))
    batch = split.batch(torch.arange(3))
    samples = json.loads(path.read_text())["samples"]
    originals = [Image.open(tmp_path / "mine" / samples[k]["image"]) for k in range(3)]  # 24x16, 16x16, 24x16
    ref = ViltImageProcessorPil(size={"shortest_edge": 64})(originals, return_tensors="pt")
    assert batch.pixel_values.shape == ref["pixel_values"].shape == (3, 3, 64, 96)
    torch.testing.assert_close(batch.pixel_values, ref["pixel_values"], atol=1e-6, rtol=0)
    assert torch.equal(batch.pixel_mask, ref["pixel_mask"])
    assert batch.empty_pixel_mask[:, :64].all() and not batch.empty_pixel_mask[:, 64:].any()
    moved = batch.rows(torch.tensor([2, 0])).to("cpu")  # what DDP ranks and device moves do
    assert torch.equal(moved.pixel_mask, batch.pixel_mask[[2, 0]])
    from dataclasses import replace

    from cmml.data.dataset import Loading
    in_process = list(split.batches(5, shuffle=False))
    workers = list(replace(split, loading=Loading(num_workers=1)).batches(5, shuffle=False))  # the CUDA path's workers
    assert len(in_process) == len(workers) == 3
    for a, b in zip(in_process, workers):
        assert torch.equal(a.pixel_values, b.pixel_values) and torch.equal(a.pixel_mask, b.pixel_mask)
