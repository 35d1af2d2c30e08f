"""Modality presence masks and MAP's codes: conversions both ways and their limits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmml.data.modality import IMAGE_MISSING, MAP_MODALITIES, TEXT_MISSING, codes_to_present, present_to_codes
from cmml.errors import DataError


def test_codes_to_present_columns_follow_modalities() -> None:
    codes = torch.tensor([0, TEXT_MISSING, IMAGE_MISSING])
    assert MAP_MODALITIES == ("image", "text")
    assert codes_to_present(codes).tolist() == [[True, True], [True, False], [False, True]]
    assert codes_to_present(codes, ("text", "image")).tolist() == [[True, True], [False, True], [True, False]]
    assert codes_to_present(np.array([2, 0])).dtype == torch.bool  # the missing tables load as numpy


def test_round_trip() -> None:
    codes = torch.tensor([[0, 1, 2], [2, 2, 0]])  # any leading shape
    for modalities in (MAP_MODALITIES, ("text", "image")):
        present = codes_to_present(codes, modalities)
        assert present.shape == (2, 3, 2) and torch.equal(present_to_codes(present, modalities), codes)
    every = torch.tensor([[True, True], [True, False], [False, True]])
    assert torch.equal(codes_to_present(present_to_codes(every)), every)


def test_every_modality_missing_has_a_mask_but_no_code() -> None:
    present = torch.tensor([[True, True], [False, False]])
    with pytest.raises(DataError, match=r"1 sample\(s\) miss every modality \(first at index \[1\]\).*MAP codes cannot"):
        present_to_codes(present)


@pytest.mark.parametrize("codes", [torch.tensor([0, 3]), torch.tensor([-1]), torch.tensor([0.0, 1.0]), torch.tensor([True])])
def test_bad_codes(codes: torch.Tensor) -> None:
    with pytest.raises(DataError, match="MAP codes must be integers in"):
        codes_to_present(codes)


def test_other_modalities_have_no_map_codes() -> None:
    with pytest.raises(DataError, match=r"MAP codes describe the modalities \('image', 'text'\), not \('audio', 'text'\)"):
        codes_to_present(torch.tensor([0]), ("audio", "text"))
    with pytest.raises(DataError, match="MAP codes describe"):
        present_to_codes(torch.ones(2, 3, dtype=torch.bool), ("image", "text", "audio"))
    with pytest.raises(DataError, match=r"bool tensor \[\.\.\., 2\]"):
        present_to_codes(torch.ones(2, 2, dtype=torch.int64))
