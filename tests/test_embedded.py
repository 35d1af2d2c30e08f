"""The embedded benchmark generator, the tokenizer and the prepare stage (through the real CLI)."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from PIL import Image

from cmml.data import embedded as E
from cmml.data.tokenizer import load_tokenizer
from cmml.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]
SMALL = {"num_classes": 8, "per_class": {"pretrain": 3, "train": 6, "val": 2, "test": 3}}


def write_params(root: Path, **bench: object) -> Path:
    """params.yaml in ``root``: the repository's file with benchmark keys overridden."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["benchmark"].update(bench)
    params["tasks"]["num_tasks"] = min(params["tasks"]["num_tasks"], params["benchmark"]["num_classes"])
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def cli(root: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """``python -m cmml ARGV --params params.yaml`` run in ``root``."""
    return subprocess.run([sys.executable, "-m", "cmml", *argv, "--params", "params.yaml"], cwd=root,
                          capture_output=True, text=True, timeout=120)


def gen(split: str, n: int, *, seed: int = 0, classes: int = 20, multilabel: bool = False) -> E.SplitSamples:
    return E.generate_split(split, seed=seed, num_classes=classes, per_class=n, image_size=32, multilabel=multilabel)


# --- generator --------------------------------------------------------------------------------

def test_generation_is_deterministic_and_seeded() -> None:
    a, b, c = gen("train", 3), gen("train", 3), gen("train", 3, seed=1)
    assert a.images == b.images and a.texts == b.texts and a.labels == b.labels
    assert a.sample_ids == b.sample_ids == [f"train-{i:06d}" for i in range(60)]
    assert a.images != c.images and a.texts != c.texts
    assert gen("val", 3).images != a.images  # the split name seeds the generator too
    with Image.open(io.BytesIO(a.images[0])) as img:
        assert img.mode == "RGB" and img.size == (32, 32) and img.info == {}  # no metadata chunks


def test_split_sizes_and_primary_counts() -> None:
    s = gen("test", 5)
    assert np.bincount(s.primary, minlength=20).tolist() == [5] * 20
    assert [lab[0] for lab in s.labels] == s.primary.tolist()
    assert len(set(s.sample_ids)) == len(s.sample_ids) == 100


def test_default_size_counts() -> None:
    """20 continual classes x (60 + 10 + 30) plus the 28 pretrain classes (7 unused shape groups) x 40."""
    n = {split: len(gen(split, k).images) for split, k in zip(E.SPLITS, (40, 60, 10, 30))}
    assert n == {"pretrain": 28 * 40, "train": 20 * 60, "val": 20 * 10, "test": 20 * 30}


def test_class_structure() -> None:
    info = E.class_info(8)
    assert [(c["group"], c["image_bit"], c["text_bit"]) for c in info[:4]] == [(0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1)]
    assert len({c["name"] for c in info}) == 8
    colours = {c["colour_family"] for c in info}
    words = set(E.vocabulary())
    assert not colours & words, "colour families must never be named in the text"
    with pytest.raises(ConfigError, match="multiple of 4"):
        E.class_info(10)
    with pytest.raises(ConfigError, match="multiple of 4"):
        E.class_info(E.MAX_CLASSES + 4)


def _words(text: str) -> list[str]:
    return re.findall(r"\w+|,", text)


def test_vocabulary_covers_every_text(tmp_path: Path) -> None:
    s = gen("train", 10, multilabel=True)
    vocab = set(E.vocabulary())
    assert all(set(_words(t)) <= vocab for t in s.texts)
    (tmp_path / "vocab.txt").write_text("\n".join([*E.SPECIAL_TOKENS, *E.vocabulary()]) + "\n")
    stats = load_tokenizer(tmp_path / "vocab.txt", 32).stats(s.texts)
    assert stats["unknown"] == 0 and stats["max_tokens"] > 5


def test_attribute_word_sometimes_omitted() -> None:
    s = gen("train", 20)
    attrs = [set(E.ATTRIBUTES[c // 4][c % 2]) for c in s.primary]
    present = np.mean([bool(a & set(_words(t))) for a, t in zip(attrs, s.texts)])
    assert 0.85 <= present <= 0.95  # ~10 % dropped
    nouns = [set(E.SHAPES[c // 4][2]) for c in s.primary]
    assert all(n & set(_words(t)) for n, t in zip(nouns, s.texts))


def test_multilabel_variant_consistency() -> None:
    s = gen("train", 20, multilabel=True)
    counts = np.bincount([len(lab) for lab in s.labels], minlength=4)
    assert counts[0] == 0 and counts[1:].min() > 0 and len(counts) == 4
    assert np.bincount(s.primary, minlength=20).tolist() == [20] * 20
    for labs, text in zip(s.labels, s.texts):
        assert len(set(labs)) == len(labs) and all(0 <= c < 20 for c in labs)
        words = set(_words(text))
        assert all(set(E.SHAPES[c // 4][2]) & words for c in labs), text  # every label has its phrase
        assert text.count(" and ") + text.count(", ") >= len(labs) - 1
    # every extra object adds image evidence: multi-object images have more saturated pixels on average
    sat = [np.ptp(np.asarray(Image.open(io.BytesIO(b)), dtype=np.int16), axis=-1).mean() for b in s.images]
    k = np.array([len(lab) for lab in s.labels])
    assert np.mean(np.array(sat)[k == 3]) > np.mean(np.array(sat)[k == 1])


# --- modality-specific signal, measured without a neural net -----------------------------------

def _pixels(s: E.SplitSamples) -> np.ndarray:
    return np.stack([np.asarray(Image.open(io.BytesIO(b))) for b in s.images]).astype(np.float32) / 255.0


def _image_features(px: np.ndarray) -> np.ndarray:
    """Shift-invariant shape (|FFT| of the saturation map) and colour (saturation-weighted mean RGB)."""
    sat = px.max(-1) - px.min(-1)
    spectrum = np.log1p(np.abs(np.fft.fft2(sat))[:, :8, :8].reshape(len(px), -1))
    weights = sat / (sat.sum((1, 2), keepdims=True) + 1e-6)
    return np.concatenate([spectrum, (px * weights[..., None]).sum((1, 2))], 1)


def _bag_of_words(texts: list[str]) -> np.ndarray:
    index = {w: i for i, w in enumerate(E.vocabulary())}
    x = np.zeros((len(texts), len(index)), np.float32)
    for i, t in enumerate(texts):
        for w in _words(t):
            x[i, index[w]] += 1
    return x


def _softmax_regression(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, classes: int) -> np.ndarray:
    """Multinomial logistic regression by full-batch gradient descent on standardised features."""
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xte = ((xtr - mu) / sd).astype(np.float32), ((xte - mu) / sd).astype(np.float32)
    w, b = np.zeros((xtr.shape[1], classes), np.float32), np.zeros(classes, np.float32)
    y = np.eye(classes, dtype=np.float32)[ytr]
    for _ in range(150):
        z = xtr @ w + b
        p = np.exp(z - z.max(1, keepdims=True))
        g = (p / p.sum(1, keepdims=True) - y) / len(xtr)
        w -= xtr.T @ g + 1e-3 * w
        b -= g.sum(0)
    return (xte @ w + b).argmax(1)


def test_each_modality_carries_part_of_the_label() -> None:
    tr, te = gen("train", 60), gen("test", 30)
    img_tr, img_te = _image_features(_pixels(tr)), _image_features(_pixels(te))
    txt_tr, txt_te = _bag_of_words(tr.texts), _bag_of_words(te.texts)
    acc = {}
    for name, a, b in (("image-only", img_tr, img_te), ("text-only", txt_tr, txt_te),
                       ("complete", np.c_[img_tr, txt_tr], np.c_[img_te, txt_te])):
        acc[name] = float((_softmax_regression(a, tr.primary, b, 20) == te.primary).mean())
    print("\nlinear-probe accuracy (20 classes, chance 0.05): " + ", ".join(f"{k} {v:.3f}" for k, v in acc.items()))
    for single in ("image-only", "text-only"):
        assert 0.25 < acc[single] < 0.6  # group + own bit: at most about half of a quad
        assert acc["complete"] > acc[single] + 0.25
    assert acc["complete"] > 0.8


# --- tokenizer --------------------------------------------------------------------------------

def test_tokenizer_pads_truncates_and_lowercases(tmp_path: Path) -> None:
    (tmp_path / "vocab.txt").write_text("\n".join([*E.SPECIAL_TOKENS, *E.vocabulary()]) + "\n")
    tok = load_tokenizer(tmp_path / "vocab.txt", 6)
    ids, mask = tok.encode(["", "A BALL", "a ball , the cube and the box"])
    cls, sep = 2, 3
    assert ids.dtype == torch.int64 and mask.dtype == torch.int64 and tuple(ids.shape) == (3, 6)
    assert ids[0].tolist() == [cls, sep, 0, 0, 0, 0] and mask[0].tolist() == [1, 1, 0, 0, 0, 0]
    assert ids[1].tolist() == tok.encode(["a ball"])[0][0].tolist()
    assert ids[2, -1].item() == sep and mask[2].tolist() == [1] * 6
    assert tok.stats(["a ball , the cube and the box"])["truncated"] == 1
    with pytest.raises(DataError, match="not found"):
        load_tokenizer(tmp_path / "absent.txt", 6)


# --- prepare stage through the CLI ---------------------------------------------------------------

def test_prepare_stage_via_cli_is_reproducible(tmp_path: Path) -> None:
    digests = []
    for run in ("a", "b"):
        root = tmp_path / run
        root.mkdir()
        write_params(root, **SMALL)
        res = cli(root, "run", "data/prepare")
        assert res.returncode == 0, res.stderr
        data = root / "runs/data/embedded/prepared"
        manifest = json.loads((data / "manifest.json").read_text())
        digests.append({s: r["sha256"] for s, r in manifest["splits"].items()})
    assert digests[0] == digests[1]
    assert manifest["label_type"] == "single" and manifest["num_classes"] == 8 and len(manifest["class_names"]) == 8
    assert {s: r["count"] for s, r in manifest["splits"].items()} == {"pretrain": 120, "train": 48, "val": 16, "test": 24}
    assert Path(f"{data}.prov.json").is_file() and not (data / "prov.json").exists()
    vocab = (data / "vocab.txt").read_text().split()
    assert vocab[:5] == list(E.SPECIAL_TOKENS) and vocab[5:] == sorted(vocab[5:])
    table = pq.read_table(data / "train.parquet")
    assert table.schema.names == ["sample_id", "image", "text", "labels", "primary"]
    assert table.schema.field("labels").type == pa.list_(pa.int64()) and table.schema.field("image").type == pa.binary()
    rows = table.to_pylist()
    assert all(r["labels"] == [r["primary"]] for r in rows)
    assert len({r["sample_id"] for r in rows}) == 48


def test_real_benchmark_without_its_keys_is_one_clear_error(tmp_path: Path) -> None:
    write_params(tmp_path, name="mmimdb")  # the embedded file's keys: a real benchmark needs its own (presets/)
    res = cli(tmp_path, "run", "data/prepare")
    assert res.returncode == 2
    assert "params.yaml: key 'benchmark." in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs/mmimdb").exists()


def test_light_stages_import_neither_torch_nor_transformers() -> None:
    code = ("import sys, cmml.cli, cmml.data.prepare, cmml.data.tasks, cmml.data.missing, cmml.data.tokenizer; "
            "heavy = {'torch', 'transformers'} & set(sys.modules); assert not heavy, heavy")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
