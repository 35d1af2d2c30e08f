"""The multi-label variant through the stage CLIs (BCE training, F1-macro scores), like MM-IMDb."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_multilabel_chain_scores_f1(tmp_path: Path) -> None:
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["benchmark"].update(variant="multi", num_classes=8, per_class={"pretrain": 16, "train": 12, "val": 2, "test": 8})
    p["tasks"]["num_tasks"] = 2
    p["pretrain"]["epochs"] = 3
    p["runtime"].update(device="cpu", threads=1)
    p["settings"] = {"both70": p["settings"]["both70"]}
    p["methods"] = {"finetune_head": {**p["methods"]["finetune_head"], "epochs": 2}}
    p["experiments"] = {"main": {"methods": ["finetune_head"], "settings": ["both70"], "seeds": [0]}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    run = ["--method", "finetune_head", "--setting", "both70", "--seed", "0"]
    for args in (["prepare"], ["tasks"], ["pretrain"], ["missing", "--setting", "both70", "--seed", "0"],
                 ["train", *run, "--task", "0"], ["train", *run, "--task", "1"], ["evaluate", *run, "--task", "1"]):
        proc = subprocess.run([sys.executable, "-m", "cmml", *args], cwd=tmp_path, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
    bench = tmp_path / "runs/embedded-multi"
    assert json.loads((bench / "data/manifest.json").read_text())["label_type"] == "multi"
    scores = json.loads((bench / "both70/finetune_head/seed0/task1/eval/scores.json").read_text())
    assert scores["metric"] == "f1_macro" and set(scores["scores"]) == {"f1_macro", "f1_micro"}
    assert all(math.isfinite(v) and 0 <= v <= 100 for v in scores["scores"]["f1_macro"] + scores["scores"]["f1_micro"])
