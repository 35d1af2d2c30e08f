"""micl metrics: CIDEr (pycocoevalcap), VQA accuracy with the standard answer normalisation, matrix summaries.

VQA normalisation follows the official VQA evaluation: punctuation handling, number words to
digits, articles dropped, contractions restored. ``symmetric`` (default) normalises prediction and
ground truth alike; the released code normalises the ground truth without the punctuation step,
so an answer holding a hyphen, comma or slash can never match (``symmetric=False``).
"""

from __future__ import annotations

import math
import re

import numpy as np

CONTRACTIONS = {"arent": "aren't", "cant": "can't", "couldnt": "couldn't", "didnt": "didn't", "doesnt": "doesn't",
                "dont": "don't", "hadnt": "hadn't", "hasnt": "hasn't", "havent": "haven't", "isnt": "isn't",
                "shouldnt": "shouldn't", "thats": "that's", "wasnt": "wasn't", "werent": "weren't", "whats": "what's",
                "wont": "won't", "wouldnt": "wouldn't", "youre": "you're", "im": "i'm", "ive": "i've", "lets": "let's"}
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
                "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = {"a", "an", "the"}
PUNCT = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def process_punctuation(text: str) -> str:
    """The VQA punctuation step: a mark between words is removed (or a space when no space surrounds it)."""
    out = text
    for p in PUNCT:
        if (p + " " in text or " " + p in text) or re.search(COMMA_STRIP, text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return PERIOD_STRIP.sub("", out, re.UNICODE)


def process_digits_articles(text: str) -> str:
    """The VQA word step: lower case, number words to digits, articles dropped, contractions restored."""
    words = []
    for w in text.lower().split():
        w = NUMBER_WORDS.get(w, w)
        if w not in ARTICLES:
            words.append(CONTRACTIONS.get(w, w))
    return " ".join(words)


def normalise_answer(text: str, punctuation: bool = True) -> str:
    """A normalised answer (VQA evaluation); ``punctuation=False`` skips the punctuation step."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digits_articles(process_punctuation(text) if punctuation else text)


def vqa_accuracy(pred: str, answers: list[str], symmetric: bool = True) -> float:
    """1 or 0 for one answer (exact match), ``min(1, matches/3)`` for several; normalised answers."""
    p = normalise_answer(pred)
    gts = [normalise_answer(a, punctuation=symmetric) for a in answers]
    matches = sum(g == p for g in gts)
    return float(matches == 1 if len(gts) == 1 else min(1.0, matches / 3))


def cider(predictions: list[str], references: list[list[str]]) -> float:
    """Corpus CIDEr (pycocoevalcap ``Cider``, no PTB tokenizer) of predictions against their reference lists."""
    from pycocoevalcap.cider.cider import Cider

    if not predictions:
        return math.nan
    gts = {i: refs for i, refs in enumerate(references)}
    res = {i: [p if p.strip() else "<empty>"] for i, p in enumerate(predictions)}
    score, _ = Cider().compute_score(gts, res)
    return float(score)


def matrix_metrics(R: np.ndarray) -> dict[str, float]:
    """Average performance (last row), forgetting (max earlier score minus final, tasks before the last) and the
    mean over the seen tasks after each step, of a T×T matrix ``R[i][j]`` (NaN where not evaluated)."""
    T = R.shape[0]
    last = R[T - 1]
    ap = float(np.nanmean(last)) if not np.all(np.isnan(last)) else math.nan
    if T > 1 and not np.isnan(R[: T - 1, : T - 1]).all():
        drops = [np.nanmax(R[j: T - 1, j]) - last[j] for j in range(T - 1) if not np.isnan(R[j: T - 1, j]).all()]
        forgetting = float(np.mean(drops)) if drops else math.nan
    else:
        forgetting = math.nan
    return {"AP": ap, "forgetting": forgetting, "last": float(last[T - 1])}
