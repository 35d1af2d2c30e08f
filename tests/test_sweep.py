"""scripts/make_sweep.py: a missing-rate grid as a valid params file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from cmml.pipeline.plan import load, plan

REPO = Path(__file__).resolve().parents[1]


def test_sweep_params_are_valid_and_cover_the_grid(tmp_path: Path) -> None:
    out = tmp_path / "params.yaml"
    subprocess.run([sys.executable, str(REPO / "scripts/make_sweep.py"), "--base", str(REPO / "params.yaml"),
                    "--out", str(out), "--types", "both", "image", "--ratios", "0.3", "0.9",
                    "--methods", "finetune_head", "rebq", "--seeds", "0", "1"], check=True, capture_output=True)
    raw = yaml.safe_load(out.read_text())
    assert list(raw["settings"]) == ["complete", "both30", "complete_test_both30", "both90", "complete_test_both90",
                                     "image30", "complete_test_image30", "image90", "complete_test_image90"]
    assert raw["settings"]["complete_test_image90"]["train"] == {"type": "both", "ratio": 0.0}
    assert raw["settings"]["complete_test_image90"]["test"] == {"type": "image", "ratio": 0.9}
    assert raw["cmml"]["experiments"] == {"sweep": {"methods": ["finetune_head", "rebq"], "settings": list(raw["settings"]),
                                                    "seeds": [0, 1]}}
    stages = plan(load(out), str(out))
    evals = [s.name for s in stages if s.name.startswith("cmml/run/")]
    assert len(evals) == 9 * 2 * 2
