"""The multi-label variant through the stage CLIs (BCE training, F1-macro scores), like MM-IMDb."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import yaml

from small import keep_families
from cmml.pipeline.plan import plan

ROOT = Path(__file__).resolve().parents[1]


def test_multilabel_chain_scores_f1(tmp_path: Path) -> None:
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    keep_families(p)  # the cmml family only
    p["benchmark"].update(variant="multi", max_text_len=25, num_classes=8, per_class={"pretrain": 16, "train": 12, "val": 2, "test": 8})
    p["tasks"]["num_tasks"] = 2
    p["pretrain"]["epochs"] = 3
    p["runtime"].update(device="cpu", threads=1)
    p["settings"] = {"both70": p["settings"]["both70"]}
    p["cmml"]["methods"] = {"finetune_head": {**p["cmml"]["methods"]["finetune_head"], "epochs": 2}}
    p["cmml"]["experiments"] = {"main": {"methods": ["finetune_head"], "settings": ["both70"], "seeds": [0]}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    for name in [s.name for s in plan(p)][:-3]:  # everything but aggregate, report and index
        proc = subprocess.run([sys.executable, "-m", "cmml", "run", name], cwd=tmp_path, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "runs/data/embedded-multi/prepared/manifest.json").read_text())["label_type"] == "multi"
    scores = json.loads((tmp_path / "runs/cmml/embedded-multi/both70/finetune_head/seed0/eval/scores.json").read_text())
    assert scores["metric"] == "f1_macro"
    for row in ("init", "task0", "task1"):
        assert set(scores["rows"][row]) == {"f1_macro", "f1_micro", "f1_samples", "f1_weighted"}
        vals = [v for m in scores["rows"][row].values() for v in m]
        assert all(math.isfinite(v) and 0 <= v <= 100 for v in vals)
