"""Per-task scores and matrix metrics against hand computations."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from cmml.eval import metrics as M

NAN = math.nan

# R[i][j] = score on task j after training task i; b = untrained model.
R3 = [[80.0, 10.0, 5.0],
      [85.0, 70.0, 8.0],
      [50.0, 40.0, 90.0]]
B3 = [10.0, 4.0, 2.0]
# AP             = (50 + 40 + 90) / 3                              = 60
# forgetting     = ((80 - 50) + (70 - 40)) / 2                     = 30
# forgetting_max = ((max(80, 85) - 50) + (70 - 40)) / 2 = (35+30)/2 = 32.5
# last           = R[2][2]                                          = 90
# bwt            = ((50 - 80) + (40 - 70)) / 2                      = -30
# fwt            = ((R[0][1] - b[1]) + (R[1][2] - b[2])) / 2 = ((10-4) + (8-2)) / 2 = 6
HAND3 = {"AP": 60.0, "forgetting": 30.0, "forgetting_max": 32.5, "last": 90.0, "bwt": -30.0, "fwt": 6.0}

pytestmark = pytest.mark.filterwarnings("error")


def test_summarize_matches_hand_computation() -> None:
    got = M.summarize(np.array(R3), B3)
    assert set(got) == set(M.METRIC_KEYS)
    for k, v in HAND3.items():
        assert got[k] == pytest.approx(v), k


def test_each_metric_function() -> None:
    assert M.average_performance(R3) == pytest.approx(60.0)
    assert M.forgetting_diag(R3) == pytest.approx(30.0)
    assert M.forgetting_max(R3) == pytest.approx(32.5)
    assert M.last(R3) == 90.0
    assert M.bwt(R3) == pytest.approx(-30.0)
    assert M.fwt(R3, B3) == pytest.approx(6.0)


def test_fwt_without_init_row_is_nan() -> None:
    assert math.isnan(M.fwt(R3))
    assert math.isnan(M.summarize(R3)["fwt"])


def test_forgetting_max_uses_history_between_diagonal_and_last_row() -> None:
    # T=4, task 0: best earlier score 90 after task 2 (row 3 is the final row and not history).
    R = [[60.0, 0, 0, 0],
         [70.0, 50.0, 0, 0],
         [90.0, 40.0, 80.0, 0],
         [30.0, 45.0, 20.0, 99.0]]
    # j=0: 90-30=60; j=1: max(50,40)-45=5; j=2: 80-20=60 -> 125/3
    assert M.forgetting_max(R) == pytest.approx(125 / 3)
    # diagonal: (60-30) + (50-45) + (80-20) = 95 -> 95/3
    assert M.forgetting_diag(R) == pytest.approx(95 / 3)


def test_joint_single_row_gives_nan_history_metrics() -> None:
    R = np.full((3, 3), NAN)
    R[2] = [50.0, 40.0, 90.0]
    got = M.summarize(R, None)
    assert got["AP"] == pytest.approx(60.0)
    assert got["last"] == 90.0
    for k in ("forgetting", "forgetting_max", "bwt", "fwt"):
        assert math.isnan(got[k]), k


def test_single_task_gives_nan_history_metrics() -> None:
    got = M.summarize([[42.0]], [7.0])
    assert got["AP"] == 42.0 and got["last"] == 42.0
    for k in ("forgetting", "forgetting_max", "bwt", "fwt"):
        assert math.isnan(got[k]), k


def test_missing_entries_propagate_nan() -> None:
    lower = np.array(R3)
    lower[np.triu_indices(3, 1)] = NAN  # only j <= i evaluated: no forward-transfer entries
    got = M.summarize(lower, B3)
    assert math.isnan(got["fwt"])
    assert got["forgetting"] == pytest.approx(30.0)
    partial = np.array(R3)
    partial[2, 0] = NAN
    assert math.isnan(M.average_performance(partial))
    assert math.isnan(M.forgetting_diag(partial))


def test_bad_shapes_raise() -> None:
    with pytest.raises(ValueError, match="T×T"):
        M.summarize(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="init row"):
        M.fwt(R3, [1.0, 2.0])


def test_accuracy_masking_by_restricted_columns() -> None:
    logits = np.array([[1.0, 2.0, 5.0, 0.0],
                       [3.0, 0.0, 0.0, 9.0],
                       [0.0, 1.0, 0.0, 0.0]])
    labels = np.array([1, 0, 2])
    # All 4 columns: argmax = [2, 3, 1] vs [1, 0, 2] -> 0 %.
    assert M.accuracy(logits, labels) == 0.0
    # Seen classes {0, 1} only: argmax = [1, 0, 1]; label 2 lies outside the columns -> 2/3.
    assert M.accuracy(logits[:, :2], labels) == pytest.approx(200 / 3)
    assert M.score(logits[:, :2], labels, multilabel=False) == {"accuracy": pytest.approx(200 / 3)}


def test_accuracy_accepts_tensors_and_empty_input() -> None:
    import torch

    assert M.accuracy(torch.tensor([[0.0, 1.0]], dtype=torch.bfloat16), torch.tensor([1])) == 100.0
    assert math.isnan(M.accuracy(np.zeros((0, 3)), np.zeros(0)))
    with pytest.raises(ValueError, match="labels"):
        M.accuracy(np.zeros((2, 3)), np.zeros(3))


Y = np.array([[1, 0, 0],
              [1, 1, 0],
              [0, 1, 0],
              [0, 0, 0]])


def test_f1_macro_counts_absent_labels_as_zero() -> None:
    logits = np.array([[2.0, 2.0, -2.0],
                       [2.0, -2.0, -2.0],
                       [-2.0, 2.0, -2.0],
                       [-2.0, -2.0, -2.0]])
    # label 0: TP=2 FP=0 FN=0 -> F1 1; label 1: TP=1 FP=1 FN=1 -> 2/(2+1+1) = 0.5;
    # label 2: no positive, no prediction -> 0 (torchmetrics 1.x, not dropped). Macro = 1.5/3 = 50 %.
    assert M.f1_macro(logits, Y) == pytest.approx(50.0)
    # micro: TP=3 FP=1 FN=1 -> 6/8 = 75 %.
    assert M.f1_micro(logits, Y) == pytest.approx(75.0)
    got = M.score(logits, Y, multilabel=True)
    assert {k: got[k] for k in ("f1_macro", "f1_micro")} == {"f1_macro": pytest.approx(50.0), "f1_micro": pytest.approx(75.0)}


def test_f1_treats_inputs_as_logits_even_inside_unit_interval() -> None:
    # Logit 0.3 -> sigmoid 0.57 > 0.5: every entry is predicted positive.
    # label 0: TP=2 FP=2 -> 4/6; label 1: same; label 2: TP=0 FP=4 -> 0. Macro = (2/3 + 2/3 + 0)/3.
    assert M.f1_macro(np.full((4, 3), 0.3), Y) == pytest.approx(100 * 4 / 9)


def test_f1_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="multi-hot"):
        M.f1_macro(np.zeros((4, 2)), Y)


def test_module_imports_without_torch() -> None:
    code = "import sys, cmml.eval.metrics; assert 'torch' not in sys.modules and 'torchmetrics' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_binary_auroc_matches_a_hand_count() -> None:
    import torch

    from cmml.eval.metrics import auroc

    # scores 0.1 0.4 0.35 0.8 for labels 0 0 1 1: 3 of the 4 positive/negative pairs ranked right
    p = torch.tensor([0.1, 0.4, 0.35, 0.8])
    logits = torch.log(p / (1 - p))
    assert auroc(logits, torch.tensor([0, 0, 1, 1])) == pytest.approx(75.0)
    two = torch.stack([torch.zeros(4), logits], dim=1)  # softmax column 1 = sigmoid(logit)
    assert auroc(two, torch.tensor([0, 0, 1, 1])) == pytest.approx(75.0)
    assert math.isnan(auroc(logits, torch.tensor([1, 1, 1, 1])))


def test_f1_samples_and_weighted_by_hand() -> None:
    """MM-IMDb's secondary F1s: per-sample average (empty-vs-empty scores 0) and positive-weighted average."""
    from cmml.eval.metrics import f1_samples, f1_weighted, score

    big = 10.0
    logits = [[big, -big, -big], [big, big, -big], [-big, -big, -big]]  # predictions {0}, {0,1}, {}
    labels = [[1, 0, 0], [1, 0, 1], [0, 0, 0]]
    # per sample: 1.0; 2*1/(2+2) = 0.5; empty/empty = 0
    assert f1_samples(logits, labels) == pytest.approx(100 * 1.5 / 3)
    # per label: label0 F1 = 1 (2 positives), label1 F1 = 0 (0 positives), label2 F1 = 0 (1 positive)
    assert f1_weighted(logits, labels) == pytest.approx(100 * (1.0 * 2 + 0.0 * 1) / 3)
    assert set(score(logits, labels, multilabel=True)) == {"f1_macro", "f1_micro", "f1_samples", "f1_weighted"}
