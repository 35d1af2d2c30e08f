"""Per-task scores (accuracy, multilabel F1) and the continual-learning metrics of a score matrix.

Scores are percentages. The matrix ``R`` is T×T with ``R[i][j]`` the score on task j's test split
after training task i (NaN where not evaluated); ``b[j]`` is the untrained model's score on task j.
Metric definitions follow docs/rebq.md §4 (AP, diagonal forgetting, Last) and docs/data.md §3 (the
max-over-history forgetting of CL toolkits; BWT and FWT as in GEM). A metric whose entries are
missing (NaN) is NaN: a partial average would not be comparable across runs.

Only numpy is imported at module level; torch and torchmetrics are imported by the score functions.
"""

from __future__ import annotations

from typing import Any

import numpy as np

METRIC_KEYS = ("AP", "forgetting", "forgetting_max", "last", "bwt", "fwt")


def _logits(logits: Any) -> Any:
    """``logits`` as a float32 CPU tensor of shape (N, C) with C >= 1."""
    import torch

    x = torch.as_tensor(logits).detach().float().cpu()
    if x.ndim != 2 or x.shape[1] < 1:
        raise ValueError(f"logits must have shape (N, C) with C >= 1, got {tuple(x.shape)}")
    return x


def accuracy(logits: Any, labels: Any) -> float:
    """Top-1 accuracy in % (NaN for no samples). ``logits`` are already restricted to the allowed
    columns, so a label outside them is always wrong."""
    import torch

    x = _logits(logits)
    y = torch.as_tensor(labels).detach().long().cpu()
    if y.shape != (x.shape[0],):
        raise ValueError(f"labels must have shape ({x.shape[0]},), got {tuple(y.shape)}")
    if not len(y):
        return float("nan")
    return float((x.argmax(dim=1) == y).double().mean()) * 100.0


def _f1(logits: Any, labels: Any, average: str) -> float:
    import torch
    from torchmetrics.functional.classification import multilabel_f1_score

    x = _logits(logits)
    y = torch.as_tensor(labels).detach().long().cpu()
    if y.shape != x.shape:
        raise ValueError(f"multi-hot labels must have the logits' shape {tuple(x.shape)}, got {tuple(y.shape)}")
    if not len(y):
        return float("nan")
    # Sigmoid here: torchmetrics applies it only when some value lies outside [0, 1], so logits
    # that happen to lie inside [0, 1] would otherwise be read as probabilities.
    probs = torch.sigmoid(x)
    return float(multilabel_f1_score(probs, y, num_labels=x.shape[1], threshold=0.5, average=average)) * 100.0


def f1_macro(logits: Any, labels: Any) -> float:
    """Multilabel F1 macro in % over the given columns (sigmoid, threshold 0.5), torchmetrics semantics.

    As in torchmetrics 1.x (and RebQ, docs/rebq.md §4 and §6.9), a label with no positive and no
    prediction is not dropped from the average: it counts as F1 = 0.
    """
    return _f1(logits, labels, "macro")


def f1_micro(logits: Any, labels: Any) -> float:
    """Multilabel F1 micro in % over the given columns (sigmoid, threshold 0.5)."""
    return _f1(logits, labels, "micro")


def f1_samples(logits: Any, labels: Any) -> float:
    """Multilabel F1 in %, computed per sample over its labels and averaged over samples (sigmoid,
    threshold 0.5; scikit-learn's "samples" average). A sample with no positive and no prediction
    scores 0 (scikit-learn's default)."""
    import torch

    x = _logits(logits)
    y = torch.as_tensor(labels).detach().long().cpu()
    if y.shape != x.shape:
        raise ValueError(f"multi-hot labels must have the logits' shape {tuple(x.shape)}, got {tuple(y.shape)}")
    if not len(y):
        return float("nan")
    pred, truth = torch.sigmoid(x) > 0.5, y.bool()
    tp = (pred & truth).sum(1).double()
    f1 = (2 * tp / (pred.sum(1) + truth.sum(1)).double()).nan_to_num(0.0)
    return float(f1.mean()) * 100.0


def f1_weighted(logits: Any, labels: Any) -> float:
    """Multilabel F1 in % averaged over labels weighted by their number of positives (sigmoid, threshold 0.5)."""
    return _f1(logits, labels, "weighted")


def auroc(logits: Any, labels: Any) -> float:
    """Binary AUROC in % (torchmetrics) from [N, 2] logits (softmax of column 1) or [N, 1] / [N]
    logits (sigmoid); NaN when only one class is present."""
    import torch
    from torchmetrics.functional.classification import binary_auroc

    x = torch.as_tensor(logits).detach().float().cpu()
    x = _logits(x[:, None] if x.ndim == 1 else x)
    y = torch.as_tensor(labels).detach().long().cpu().reshape(-1)
    p = x.softmax(dim=1)[:, 1] if x.ndim == 2 and x.shape[1] == 2 else torch.sigmoid(x.reshape(-1))
    if p.shape != y.shape:
        raise ValueError(f"labels must have shape ({p.shape[0]},), got {tuple(y.shape)}")
    if len(torch.unique(y)) < 2:
        return float("nan")
    return float(binary_auroc(p, y)) * 100.0


def score(logits: Any, labels: Any, multilabel: bool) -> dict[str, float]:
    """``{"f1_macro", "f1_micro", "f1_samples", "f1_weighted"}`` for multi-hot labels, else ``{"accuracy"}``."""
    if multilabel:
        return {"f1_macro": f1_macro(logits, labels), "f1_micro": f1_micro(logits, labels),
                "f1_samples": f1_samples(logits, labels), "f1_weighted": f1_weighted(logits, labels)}
    return {"accuracy": accuracy(logits, labels)}


def _matrix(R: Any) -> np.ndarray:
    m = np.asarray(R, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 1:
        raise ValueError(f"score matrix must be T×T with T >= 1, got shape {m.shape}")
    return m


def average_performance(R: Any) -> float:
    """AP: mean of the last row (every task weighted equally)."""
    return float(np.mean(_matrix(R)[-1]))


def forgetting_diag(R: Any) -> float:
    """RebQ forgetting: mean over j < T-1 of R[j][j] - R[T-1][j] (NaN for T = 1)."""
    m = _matrix(R)
    T = len(m)
    if T < 2:
        return float("nan")
    j = np.arange(T - 1)
    return float(np.mean(m[j, j] - m[-1, j]))


def forgetting_max(R: Any) -> float:
    """Toolkit forgetting: mean over j < T-1 of max_{j <= i <= T-2} R[i][j] - R[T-1][j] (NaN for T = 1)."""
    m = _matrix(R)
    T = len(m)
    if T < 2:
        return float("nan")
    return float(np.mean([np.max(m[j:T - 1, j]) - m[-1, j] for j in range(T - 1)]))


def last(R: Any) -> float:
    """Last: R[T-1][T-1], the last task's score after training it."""
    return float(_matrix(R)[-1, -1])


def bwt(R: Any) -> float:
    """GEM backward transfer: mean over j < T-1 of R[T-1][j] - R[j][j] (NaN for T = 1)."""
    return -forgetting_diag(R)


def fwt(R: Any, b: Any = None) -> float:
    """GEM forward transfer: mean over j >= 1 of R[j-1][j] - b[j] (NaN without ``b`` or for T = 1)."""
    m = _matrix(R)
    T = len(m)
    if b is None or T < 2:
        return float("nan")
    base = np.asarray(b, dtype=np.float64)
    if base.shape != (T,):
        raise ValueError(f"init row must have {T} entries, got shape {base.shape}")
    j = np.arange(1, T)
    return float(np.mean(m[j - 1, j] - base[j]))


def summarize(R: Any, b: Any = None) -> dict[str, float]:
    """Every matrix metric, keyed as in ``METRIC_KEYS``."""
    return {"AP": average_performance(R), "forgetting": forgetting_diag(R), "forgetting_max": forgetting_max(R),
            "last": last(R), "bwt": bwt(R), "fwt": fwt(R, b)}
