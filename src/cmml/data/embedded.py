"""The embedded benchmark: deterministic image+text samples whose classes need both modalities.

Design (see docs/data.md §4). Classes come in *quads*: class ``c`` belongs to group
``g = c // 4`` and carries two bits, ``image_bit = (c % 4) // 2`` and ``text_bit = c % 2``.

- The group is visible in both modalities: the image shape and the text noun (with synonyms).
- The image bit is visible only in the image: the colour family of the object (warm or cool);
  colours are never named in the text.
- The text bit is visible only in the text: an attribute word (e.g. wooden vs metal, with
  synonyms); nothing in the image depends on it.

So an image alone resolves the group and the image bit (about half of a quad), a text alone the
group and the text bit, and a complete pair the class. Nuisance keeps both modalities imperfect:
position, size and rotation jitter, hue/saturation/brightness jitter, a textured background, a
random distractor blob; sentence templates, synonyms, filler and distractor phrases, and the
attribute word left out of about 10% of the phrases.

Multi-label variant: 1-3 labels per sample, the primary label drawn first and the others from the
remaining classes of the split; every label adds one object to the image and one phrase to the text.

The continual splits (train/val/test) use classes ``0..num_classes-1``; the ``pretrain`` split uses
every other class, i.e. the shape groups the continual classes leave unused (data.md §4.1): the
backbone's pretraining never sees a continual class, its shapes or its words.

Everything is drawn from a numpy Generator seeded by (benchmark seed, split name), and images are
PNG-encoded by PIL without metadata, so the bytes are identical across runs and machines.
"""

from __future__ import annotations

import colorsys
import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from cmml.errors import ConfigError

GENERATOR_VERSION = "embedded-v2"  # v2: the pretrain split holds only classes disjoint from the continual ones
RNG_KEY = "embedded-v1"  # seeds every split; unchanged since v1, so train/val/test are bit-identical to v1's
SPLITS = ("pretrain", "train", "val", "test")
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
ATTRIBUTE_DROP = 0.1  # probability that a phrase leaves out its (informative) attribute word
LABEL_COUNT_PROBS = (0.5, 0.3, 0.2)  # multi-label variant: P(1), P(2), P(3) labels per sample

Mask = Callable[[np.ndarray, np.ndarray], np.ndarray]

# group -> (shape drawn in the image, nouns naming it in the text). Masks take coordinates in
# units of the object radius, centred on the object, y pointing down.
SHAPES: list[tuple[str, Mask, tuple[str, ...]]] = [
    ("circle", lambda u, v: u * u + v * v <= 1.0, ("ball", "sphere", "orb")),
    ("square", lambda u, v: np.maximum(abs(u), abs(v)) <= 0.8, ("block", "cube", "box")),
    ("triangle", lambda u, v: (v <= 0.75) & (abs(u) <= (v + 0.95) * 0.55), ("pyramid", "wedge", "cone")),
    ("bowtie", lambda u, v: (abs(v) <= abs(u) * 0.85 + 0.08) & (abs(u) <= 0.95), ("bowtie", "ribbon", "butterfly")),
    ("cross", lambda u, v: ((abs(u) <= 0.3) | (abs(v) <= 0.3)) & (np.maximum(abs(u), abs(v)) <= 1.0),
     ("cross", "plus", "junction")),
    ("ring", lambda u, v: (u * u + v * v <= 1.0) & (u * u + v * v >= 0.3), ("ring", "hoop", "donut")),
    ("hbar", lambda u, v: (abs(u) <= 1.0) & (abs(v) <= 0.35), ("plank", "beam", "slab")),
    ("vbar", lambda u, v: (abs(u) <= 0.35) & (abs(v) <= 1.0), ("pole", "pillar", "column")),
    ("frame", lambda u, v: (np.maximum(abs(u), abs(v)) <= 0.9) & (np.maximum(abs(u), abs(v)) >= 0.5),
     ("frame", "border", "outline")),
    ("xmark", lambda u, v: ((abs(u - v) <= 0.4) | (abs(u + v) <= 0.4)) & (np.maximum(abs(u), abs(v)) <= 0.85),
     ("saltire", "x", "chi")),
    ("dome", lambda u, v: (u * u + v * v <= 1.0) & (v <= 0.2), ("dome", "arch", "mound")),
    ("tee", lambda u, v: ((abs(v + 0.7) <= 0.3) & (abs(u) <= 1.0)) | ((abs(u) <= 0.3) & (abs(v) <= 1.0)),
     ("hammer", "mallet", "tee")),
]
ALL_CLASSES = 4 * len(SHAPES)
MAX_CLASSES = ALL_CLASSES - 4  # continual classes; at least one shape group is left to the pretrain split

# group -> (words for text bit 0, words for text bit 1)
ATTRIBUTES: list[tuple[tuple[str, ...], tuple[str, ...]]] = [
    (("wooden", "timber"), ("metal", "steel", "iron")),
    (("soft", "fluffy", "plush"), ("hard", "rigid", "stiff")),
    (("old", "ancient", "vintage"), ("new", "modern", "fresh")),
    (("heavy", "weighty", "hefty"), ("lightweight", "featherweight")),
    (("smooth", "polished", "sleek"), ("rough", "coarse", "bumpy")),
    (("quiet", "silent"), ("noisy", "loud")),
    (("cheap", "budget"), ("expensive", "costly", "pricey")),
    (("wet", "damp", "soaked"), ("dry", "arid", "parched")),
    (("fragile", "delicate"), ("sturdy", "robust", "durable")),
    (("clean", "spotless"), ("dirty", "grimy", "muddy")),
    (("fast", "quick", "speedy"), ("slow", "sluggish")),
    (("sweet", "sugary"), ("sour", "bitter")),
]
# image bit -> (family name, hue interval in [0, 1) turns); never mentioned in text
COLOURS = (("warm", (-0.04, 0.14)), ("cool", (0.45, 0.68)))

TEMPLATES = ("a photo of {np}", "there is {np}", "this picture shows {np}", "look at {np}",
             "an image with {np}", "{np}", "here we see {np}", "a drawing of {np}")
FILLER_ADJ = ("nice", "plain", "typical", "ordinary", "lovely", "simple", "single", "strange")
DETERMINERS = ("a", "the", "one")
PREPOSITIONS = ("next to", "near", "beside", "behind", "on", "under")
THINGS = ("table", "tree", "window", "lamp", "chair", "wall", "road", "cloud", "shelf", "floor")
LAYOUTS = {1: [(0.5, 0.5)], 2: [(0.28, 0.5), (0.72, 0.5)], 3: [(0.27, 0.3), (0.73, 0.3), (0.5, 0.74)]}


@dataclass
class SplitSamples:
    """One generated split, rows in their final order."""

    sample_ids: list[str]
    images: list[bytes]  # PNG
    texts: list[str]
    labels: list[list[int]]  # original class ids, primary first
    primary: np.ndarray  # int64 [N]


def check_num_classes(num_classes: int) -> None:
    """ConfigError unless ``num_classes`` is a positive multiple of 4 the generator can draw."""
    if num_classes <= 0 or num_classes % 4 or num_classes > MAX_CLASSES:
        raise ConfigError(f"key 'benchmark.num_classes' must be a multiple of 4 between 4 and {MAX_CLASSES} "
                          f"for the embedded benchmark ({len(SHAPES)} shape groups, at least one of which is "
                          f"left to the pretrain split), got {num_classes}")


def split_class_ids(split: str, num_classes: int) -> list[int]:
    """Classes a split draws from: ``0..num_classes-1``, or for ``pretrain`` every other class."""
    check_num_classes(num_classes)
    return list(range(num_classes, ALL_CLASSES)) if split == "pretrain" else list(range(num_classes))


def class_info(num_classes: int, split: str = "train") -> list[dict[str, object]]:
    """Per-class description of a split's classes: name, group (shape + nouns), image bit (colour),
    text bit (attribute words)."""
    out = []
    for c in split_class_ids(split, num_classes):
        g, ib, tb = c // 4, (c % 4) // 2, c % 2
        shape, _, nouns = SHAPES[g]
        words = ATTRIBUTES[g][tb]
        out.append({"id": c, "name": f"{words[0]}-{COLOURS[ib][0]}-{shape}", "group": g, "shape": shape,
                    "nouns": list(nouns), "image_bit": ib, "colour_family": COLOURS[ib][0],
                    "text_bit": tb, "attribute_words": list(words)})
    return out


def vocabulary() -> list[str]:
    """Every word (and punctuation token) the generator can emit, sorted, without special tokens."""
    words: set[str] = {",", "and", "that", "is", "an"}
    for chunks in (TEMPLATES, FILLER_ADJ, DETERMINERS, PREPOSITIONS, THINGS):
        for chunk in chunks:
            words.update(w for w in chunk.replace("{np}", " ").split())
    for _, _, nouns in SHAPES:
        words.update(nouns)
    for pair in ATTRIBUTES:
        for side in pair:
            words.update(side)
    return sorted(words)


def _rng(seed: int, split: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{RNG_KEY}|{seed}|{split}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


def _pick(rng: np.random.Generator, items: tuple[str, ...]) -> str:
    return items[int(rng.integers(len(items)))]


def _colour(rng: np.random.Generator, hue_range: tuple[float, float], sat: tuple[float, float]) -> np.ndarray:
    h = rng.uniform(*hue_range) % 1.0
    return np.array(colorsys.hsv_to_rgb(h, rng.uniform(*sat), rng.uniform(0.65, 1.0)), dtype=np.float32)


def _background(rng: np.random.Generator, size: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Grey-ish textured canvas: base tint, linear gradient, coarse blotches, pixel noise."""
    base = rng.uniform(0.25, 0.75) + rng.normal(0.0, 0.03, size=3)
    angle = rng.uniform(0.0, 2 * np.pi)
    grad = (np.cos(angle) * (xx - size / 2) + np.sin(angle) * (yy - size / 2)) / size * rng.uniform(0.0, 0.25)
    cells = max(size // 8, 1)
    blotch = np.repeat(np.repeat(rng.normal(0.0, 0.05, size=(cells, cells)), size // cells + 1, 0), size // cells + 1, 1)
    img = base[None, None, :] + (grad + blotch[:size, :size])[:, :, None]
    return img + rng.normal(0.0, 0.04, size=(size, size, 3))


def _paint(img: np.ndarray, mask: np.ndarray, colour: np.ndarray, rng: np.random.Generator) -> None:
    shade = 1.0 + rng.normal(0.0, 0.06, size=mask.shape)  # surface texture
    img[mask] = colour[None, :] * shade[mask][:, None]


def _render(rng: np.random.Generator, classes: list[int], size: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    img = _background(rng, size, yy, xx)
    distractor_first = rng.random() < 0.5
    has_distractor = rng.random() < 0.7

    def distractor() -> None:
        cy, cx = rng.uniform(0.1, 0.9, size=2) * size
        ry, rx = rng.uniform(0.07, 0.14, size=2) * size
        mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        _paint(img, mask, _colour(rng, (0.0, 1.0), (0.2, 1.0)), rng)

    if has_distractor and distractor_first:
        distractor()
    slots = LAYOUTS[len(classes)]
    order = rng.permutation(len(slots))
    scale = 0.28 if len(classes) == 1 else 0.19
    for c, slot in zip(classes, order):
        shape_mask = SHAPES[c // 4][1]
        cy = (slots[slot][1] + rng.uniform(-0.12, 0.12) / len(classes)) * size
        cx = (slots[slot][0] + rng.uniform(-0.12, 0.12) / len(classes)) * size
        r = scale * size * rng.uniform(0.8, 1.15)
        theta = rng.uniform(-0.35, 0.35)
        dx, dy = (xx - cx) / r, (yy - cy) / r
        u = np.cos(theta) * dx + np.sin(theta) * dy
        v = -np.sin(theta) * dx + np.cos(theta) * dy
        _paint(img, shape_mask(u, v), _colour(rng, COLOURS[(c % 4) // 2][1], (0.55, 1.0)), rng)
    if has_distractor and not distractor_first:
        distractor()
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _phrase(rng: np.random.Generator, c: int) -> str:
    noun = _pick(rng, SHAPES[c // 4][2])
    attr = _pick(rng, ATTRIBUTES[c // 4][c % 2]) if rng.random() >= ATTRIBUTE_DROP else None
    filler = _pick(rng, FILLER_ADJ) if rng.random() < 0.3 else None
    det = _pick(rng, DETERMINERS)
    if attr is not None and rng.random() < 0.2:
        words = [det, *([filler] if filler else []), noun, "that", "is", attr]
    else:
        words = [det, *([filler] if filler else []), *([attr] if attr else []), noun]
    if det == "a" and words[1][0] in "aeiou":
        words[0] = "an"
    return " ".join(words)


def _sentence(rng: np.random.Generator, classes: list[int]) -> str:
    phrases = [_phrase(rng, c) for c in classes]
    np_text = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    text = _pick(rng, TEMPLATES).format(np=np_text)
    if rng.random() < 0.4:
        text += f" {_pick(rng, PREPOSITIONS)} the {_pick(rng, THINGS)}"
    return text


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def generate_split(split: str, *, seed: int, num_classes: int, per_class: int, image_size: int,
                   multilabel: bool = False) -> SplitSamples:
    """Generate ``per_class`` samples per (primary) class of the split (:func:`split_class_ids`), rows shuffled."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
    pool = np.asarray(split_class_ids(split, num_classes), dtype=np.int64)
    rng = _rng(seed, split)
    primary = rng.permutation(np.repeat(pool, per_class))
    yy, xx = np.mgrid[0:image_size, 0:image_size].astype(np.float32) + 0.5
    images, texts, labels = [], [], []
    for p in primary:
        classes = [int(p)]
        if multilabel:
            k = int(rng.choice(len(LABEL_COUNT_PROBS), p=LABEL_COUNT_PROBS)) + 1
            others = pool[pool != p]
            classes += [int(x) for x in rng.choice(others, size=k - 1, replace=False)]
        images.append(_png(_render(rng, classes, image_size, yy, xx)))
        texts.append(_sentence(rng, classes))
        labels.append(classes)
    ids = [f"{split}-{i:06d}" for i in range(len(primary))]
    return SplitSamples(ids, images, texts, labels, primary)
