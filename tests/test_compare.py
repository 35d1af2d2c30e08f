"""``cmml publish`` / ``cmml compare``: a reproduction against the committed reference, in std units."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cmml.cli import main
from cmml.errors import DataError
from cmml.report.compare import compare, publish


def write(root: Path, groups: dict) -> None:
    (root / "cmml").mkdir(parents=True, exist_ok=True)
    (root / "cmml/metrics.json").write_text(json.dumps(groups, sort_keys=True))
    (root / "index.md").write_text("# index\n")


REF = {"both70/rebq": {"metric": "accuracy", "n_seeds": 3, "AP": {"mean": 30.0, "std": 2.0},
                       "last": {"mean": 50.0, "std": 5.0}, "forgetting": {"mean": 10.0, "std": None}}}


def test_identical_within_noise_and_differs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path / "results", REF)
    assert publish(tmp_path / "results", tmp_path / "reference") == 0
    lines, differs = compare(tmp_path / "reference", tmp_path / "results")
    assert differs == 0 and "byte-identical" in lines[0]
    moved = json.loads(json.dumps(REF))
    moved["both70/rebq"]["AP"]["mean"] = 33.0  # z = +1.5
    moved["both70/rebq"]["last"]["mean"] = 30.0  # z = -4
    write(tmp_path / "results", moved)
    lines, differs = compare(tmp_path / "reference", tmp_path / "results")
    text = "\n".join(lines)
    assert differs == 1 and "AP: reference 30.0 ± 2.0, now 33.0 (diff +3.00, z +1.50): within noise" in text
    assert "last: reference 50.0 ± 5.0, now 30.0 (diff -20.00, z -4.00): differs" in text
    assert main(["compare", "--reference", str(tmp_path / "reference"), "--results", str(tmp_path / "results")]) == 1


def test_missing_results_is_one_clear_error(tmp_path: Path) -> None:
    write(tmp_path / "reference", REF)
    with pytest.raises(DataError, match="results/cmml/metrics.json: missing; reproduce"):
        compare(tmp_path / "reference", tmp_path / "results")
