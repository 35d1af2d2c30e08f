"""The micl family's embedded generative data: images, short videos and audio with captions and QA.

Everything is drawn from generating attributes with a local RNG per (seed, task, split), so the same
params give the same bytes on every machine and nothing is downloaded:

* **image** (16×16 RGB): one shape (square, disk, cross) of one colour in one quadrant, on noise;
* **video** (4 frames of 16×16): a shape of one colour moving left, right, up or down;
* **audio** (1-D signal, 4 kHz, 1 s): ``count`` events of one type followed by one event of another
  type (beep, hum, click, chirp), turned into a log-mel spectrogram with ``torch.stft``.

Each item has three caption paraphrases and question/answer pairs derived from the attributes:
image QA is knowledge-style with ten noisy answers (as OK-VQA), video and audio QA have one answer
(as MSVD-QA and Clotho-AQA). Six tasks (each modality × captioning/QA) are run in the two orders of
the paper. A text-only instruction corpus (for IKD and the LM's pretraining) and one pseudo QA pair
per captioning training item, derived from its first caption, complete the data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cmml.families.micl.tasks import MODALITIES, TASKS

COLORS = {"red": (0.9, 0.15, 0.1), "green": (0.1, 0.8, 0.2), "blue": (0.15, 0.25, 0.95), "yellow": (0.95, 0.85, 0.1)}
SHAPES = ("square", "disk", "cross")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
DIRECTIONS = ("left", "right", "up", "down")
SOUNDS = ("beep", "hum", "click", "chirp")
NUMBERS = ("zero", "one", "two", "three")
PLURAL = {"beep": "beeps", "hum": "hums", "click": "clicks", "chirp": "chirps"}
# knowledge-style answers (OK-VQA-like): per colour / shape a majority answer and two noisy alternatives
COLOR_THINGS = {"red": ("apple", "cherry", "fire-truck"), "green": ("lime", "grass", "leaf"),
                "blue": ("sky", "ocean", "blueberry"), "yellow": ("banana", "lemon", "sun")}
SHAPE_THINGS = {"square": ("box", "dice", "window"), "disk": ("ball", "coin", "wheel"),
                "cross": ("plus-sign", "church", "x")}
SIZE = 16
FRAMES = 4
SAMPLE_RATE = 4000
N_FFT, HOP, N_MELS = 256, 125, 16
CAPTION_PROMPTS = ("describe the {m} .", "what does the {m} show ?", "write a caption for the {m} .")
SPLIT_SALT = {"pretrain": 1, "train": 2, "test": 3}


@dataclass(frozen=True)
class Item:
    """One generated input: modality, its tensor and the generating attributes."""

    modality: str
    x: torch.Tensor
    attrs: dict[str, Any]


def _rng(seed: int, *salt: int) -> np.random.Generator:
    return np.random.default_rng([seed, *salt])


def _shape_mask(shape: str, cy: int, cx: int, r: int = 3) -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    dy, dx = yy - cy, xx - cx
    if shape == "square":
        return (np.abs(dy) <= r) & (np.abs(dx) <= r)
    if shape == "disk":
        return dy**2 + dx**2 <= r * r + 1
    return ((np.abs(dy) <= 1) & (np.abs(dx) <= r)) | ((np.abs(dx) <= 1) & (np.abs(dy) <= r))


def _canvas(rng: np.random.Generator, masks: list[np.ndarray], color: str) -> np.ndarray:
    img = rng.normal(0.15, 0.05, (3, SIZE, SIZE))
    out = np.repeat(img[None], len(masks), axis=0)
    rgb = np.array(COLORS[color])[:, None, None]
    for k, m in enumerate(masks):
        out[k][:, m] = (rgb + rng.normal(0, 0.04, (3, 1, 1)))[:, 0, 0][:, None]
    return np.clip(out, 0, 1).astype(np.float32)


def make_image(rng: np.random.Generator) -> Item:
    """A shape of one colour in one quadrant."""
    color, shape, pos = rng.choice(list(COLORS)), rng.choice(SHAPES), int(rng.integers(4))
    cy, cx = (4 if pos < 2 else 11) + int(rng.integers(-1, 2)), (4 if pos % 2 == 0 else 11) + int(rng.integers(-1, 2))
    x = _canvas(rng, [_shape_mask(shape, cy, cx)], str(color))[0]
    return Item("image", torch.from_numpy(x), {"color": str(color), "shape": str(shape), "position": POSITIONS[pos]})


def make_video(rng: np.random.Generator) -> Item:
    """Four frames of a shape moving in one direction (3 pixels per frame)."""
    color, shape, d = rng.choice(list(COLORS)), rng.choice(SHAPES), int(rng.integers(4))
    step = {0: (0, -3), 1: (0, 3), 2: (-3, 0), 3: (3, 0)}[d]
    start = [int(rng.integers(6, 10)) - step[k] * 3 // 2 for k in range(2)]
    masks = [_shape_mask(str(shape), start[0] + step[0] * f, start[1] + step[1] * f) for f in range(FRAMES)]
    x = _canvas(rng, masks, str(color))
    return Item("video", torch.from_numpy(x), {"color": str(color), "shape": str(shape), "direction": DIRECTIONS[d]})


def _event(kind: str, rng: np.random.Generator) -> np.ndarray:
    n = {"beep": 400, "hum": 800, "click": 80, "chirp": 500}[kind]
    t = np.arange(n) / SAMPLE_RATE
    if kind == "beep":
        sig = np.sin(2 * np.pi * 1500 * t)
    elif kind == "hum":
        sig = np.sin(2 * np.pi * 180 * t) + 0.5 * np.sin(2 * np.pi * 360 * t)
    elif kind == "click":
        sig = rng.normal(0, 1, n) * np.exp(-t * 300)
    else:
        sig = np.sin(2 * np.pi * (400 * t + 0.5 * 3000 * t * t / t[-1]))
    return sig * np.hanning(n)


def make_audio(rng: np.random.Generator) -> Item:
    """``count`` events of one sound then one event of another, as a 1 s waveform at 4 kHz."""
    first, last = (str(s) for s in rng.choice(SOUNDS, size=2, replace=False))
    count = int(rng.integers(1, 4))
    wave = rng.normal(0, 0.02, SAMPLE_RATE)
    pos = int(rng.integers(50, 250))
    for kind in [first] * count + [last]:
        ev = _event(kind, rng) * rng.uniform(0.6, 1.0)
        wave[pos:pos + len(ev)] += ev[: SAMPLE_RATE - pos]
        pos += len(ev) + int(rng.integers(60, 160))
    return Item("audio", torch.from_numpy(wave.astype(np.float32)), {"first": first, "count": count, "last": last})


def mel_filterbank(n_fft: int = N_FFT, n_mels: int = N_MELS, sr: int = SAMPLE_RATE) -> torch.Tensor:
    """Triangular mel filters (n_mels × n_fft//2+1), HTK mel scale."""
    def mel(f: np.ndarray) -> np.ndarray:
        return 2595 * np.log10(1 + f / 700)

    edges = 700 * (10 ** (np.linspace(0, mel(np.array(sr / 2)), n_mels + 2) / 2595) - 1)
    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    fb = np.zeros((n_mels, len(freqs)))
    for m in range(n_mels):
        lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
        fb[m] = np.clip(np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)), 0, None)
    return torch.tensor(fb, dtype=torch.float32)


def log_mel(wave: torch.Tensor) -> torch.Tensor:
    """Log-mel spectrogram (N_MELS × frames) of 1-D waveforms (..., samples) via ``torch.stft``."""
    spec = torch.stft(wave, N_FFT, HOP, window=torch.hann_window(N_FFT), return_complex=True).abs() ** 2
    return torch.log(mel_filterbank() @ spec + 1e-6)


MAKERS = {"image": make_image, "video": make_video, "audio": make_audio}


def captions(item: Item) -> list[str]:
    """Three paraphrased captions of an item, derived from its attributes."""
    a = item.attrs
    if item.modality == "image":
        c, s, p = a["color"], a["shape"], a["position"]
        return [f"a {c} {s} in the {p}", f"there is a {c} {s} at the {p}", f"the {p} holds a {c} {s}"]
    if item.modality == "video":
        c, s, d = a["color"], a["shape"], a["direction"]
        return [f"a {c} {s} moves {d}", f"a {c} {s} is moving {d}", f"the {c} {s} travels {d}"]
    f, n, last = a["first"], a["count"], a["last"]
    many = f if n == 1 else PLURAL[f]
    return [f"{NUMBERS[n]} {many} then a {last}", f"{NUMBERS[n]} {many} followed by a {last}",
            f"a {last} after {NUMBERS[n]} {many}"]


def qa(item: Item, rng: np.random.Generator) -> tuple[str, list[str]]:
    """One question and its answers: ten noisy knowledge answers (image) or a single answer (video, audio)."""
    a = item.attrs
    if item.modality == "image":
        if rng.random() < 0.5:
            question, things = f"what thing has the colour of the {a['shape']} ?", COLOR_THINGS[a["color"]]
        else:
            question, things = "what thing has this shape ?", SHAPE_THINGS[a["shape"]]
        answers = [things[0]] * 7 + [things[int(rng.integers(1, 3))] for _ in range(3)]
        rng.shuffle(answers)
        return question, [str(x) for x in answers]
    if item.modality == "video":
        kind = int(rng.integers(3))
        if kind == 0:
            return "what colour is the moving object ?", [a["color"]]
        if kind == 1:
            return f"which way does the {a['shape']} move ?", [a["direction"]]
        return "what shape is moving ?", [a["shape"]]
    kind = int(rng.integers(3))
    if kind == 0:
        return f"how many {PLURAL[a['first']]} are there ?", [NUMBERS[a["count"]]]
    if kind == 1:
        return "what sound comes last ?", [a["last"]]
    return "what sound comes first ?", [a["first"]]


def pseudo_qa(item: Item) -> tuple[str, str]:
    """A question/answer pair read off an item's first caption (stands in for the released LLM-written file)."""
    words = captions(item)[0].split()
    if item.modality == "image":
        return "what colour is the shape ?", words[1]
    if item.modality == "video":
        return f"which way does the {words[2]} move ?", words[-1]
    return "what sound comes last ?", words[-1]


def instruction_corpus(seed: int, n: int) -> list[str]:
    """Text-only instructions (prompt + input, lower case) in the style of Natural Instructions."""
    rng = _rng(seed, 99)
    opposites = {"left": "right", "right": "left", "up": "down", "down": "up", "top": "bottom", "bottom": "top"}
    words = [*COLORS, *SHAPES, *SOUNDS, *DIRECTIONS]
    out = []
    for _ in range(n):
        kind = int(rng.integers(5))
        if kind == 0:
            w = str(rng.choice(list(opposites)))
            out.append(f"give the opposite of the word : {w} . answer : {opposites[w]}")
        elif kind == 1:
            k = int(rng.integers(1, 4))
            ws = [str(x) for x in rng.choice(words, size=k)]
            out.append(f"count the words : {' '.join(ws)} . answer : {NUMBERS[k]}")
        elif kind == 2:
            c = str(rng.choice(list(COLORS)))
            out.append(f"name a thing that is {c} . answer : {COLOR_THINGS[c][int(rng.integers(3))]}")
        elif kind == 3:
            ws = [str(x) for x in rng.choice(words, size=3, replace=False)]
            out.append(f"repeat the last word : {' '.join(ws)} . answer : {ws[-1]}")
        else:
            s = str(rng.choice(SHAPES))
            out.append(f"name a thing shaped like a {s} . answer : {SHAPE_THINGS[s][int(rng.integers(3))]}")
    return out


def cue(modality: str) -> str:
    """The text placed before an input's modality tokens."""
    return f"{modality} :"


def vocabulary() -> list[str]:
    """Every word the generators, prompts and corpora can produce (a closed vocabulary, sorted)."""
    words: set[str] = {*COLORS, *SHAPES, *DIRECTIONS, *SOUNDS, *NUMBERS, *PLURAL.values(), *MODALITIES}
    for things in (*COLOR_THINGS.values(), *SHAPE_THINGS.values()):
        words.update(things)
    for p in POSITIONS:
        words.update(p.split())
    fixed = ("a there is at the holds in moves moving travels then followed by after what thing has colour of this "
             "shape ? which way does move is how many are sound comes last first describe . show write caption for "
             ": give opposite word answer count words name that shaped like repeat right down bottom object")
    words.update(fixed.split())
    return sorted(words)


def generate_task(seed: int, task: str, split: str, n: int) -> list[dict[str, Any]]:
    """``n`` samples of ``task`` for ``split``: input (tensor list), captions, question, answers, pseudo QA."""
    modality, kind = TASKS[task]
    rng = _rng(seed, SPLIT_SALT[split], list(TASKS).index(task))
    out = []
    for i in range(n):
        item = MAKERS[modality](rng)
        q, answers = qa(item, rng)
        pq, pa = pseudo_qa(item)
        prompt = CAPTION_PROMPTS[int(rng.integers(len(CAPTION_PROMPTS)))].format(m=modality)
        out.append({"id": f"{task}-{split}-{i}", "task": task, "modality": modality, "kind": kind, "x": item.x,
                    "attrs": item.attrs, "captions": captions(item), "caption_prompt": prompt,
                    "question": q, "answers": answers, "pseudo_question": pq, "pseudo_answer": pa})
    return out


def encoder_input(modality: str, x: torch.Tensor) -> torch.Tensor:
    """What a modality encoder reads: images/videos as they are, audio as its log-mel spectrogram."""
    return log_mel(x) if modality == "audio" else x


ATTRIBUTE_HEADS = {  # encoder pretraining targets: the generating attributes, never a caption or an answer text
    "image": {"color": list(COLORS), "shape": list(SHAPES), "position": list(POSITIONS)},
    "video": {"color": list(COLORS), "shape": list(SHAPES), "direction": list(DIRECTIONS)},
    "audio": {"first": list(SOUNDS), "count": [1, 2, 3], "last": list(SOUNDS)},
}


def attribute_labels(modality: str, attrs: dict[str, Any]) -> list[int]:
    """Class index of each pretraining attribute of an item."""
    return [vals.index(attrs[name]) for name, vals in ATTRIBUTE_HEADS[modality].items()]


def pretrain_items(seed: int, modality: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder inputs and attribute labels of ``n`` pretraining items of a modality (their own split)."""
    rng = _rng(seed, SPLIT_SALT["pretrain"], 100 + MODALITIES.index(modality))
    items = [MAKERS[modality](rng) for _ in range(n)]
    x = encoder_input(modality, torch.stack([it.x for it in items]))
    y = torch.tensor([attribute_labels(modality, it.attrs) for it in items])
    return x, y


def lm_corpus(seed: int, n_captions: int, n_instructions: int) -> list[str]:
    """Text for the LM's causal pretraining: captions and QA of pretraining items (no task item) + instructions."""
    rng = _rng(seed, SPLIT_SALT["pretrain"], 200)
    texts = []
    for k in range(n_captions):
        item = MAKERS[MODALITIES[k % 3]](rng)
        q, answers = qa(item, rng)
        texts += [captions(item)[int(rng.integers(3))], f"{q} {answers[0]}"]
    return texts + instruction_corpus(seed + 1, n_instructions)
