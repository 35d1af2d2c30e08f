"""Interrupted stages leave nothing half-written under a final name, and a rerun resumes.

A stage writes its outputs to temp paths only at the end (inside StageRun), so a stage killed
while computing leaves no trace; SIGTERM (what Snakemake and DVC send) exits cleanly with 143;
temp outputs left by a SIGKILL during the short commit window are removed by the next run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "CMML_WORKER": "0"}


def test_interrupted_stage_leaves_nothing_and_rerun_resumes(tmp_path: Path) -> None:
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["benchmark"].update(num_classes=8, per_class={"pretrain": 60, "train": 4, "val": 1, "test": 4})
    p["pretrain"]["epochs"] = 50
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    for stage in ("prepare", "tasks"):
        subprocess.run([sys.executable, "-m", "cmml", stage], cwd=tmp_path, check=True, capture_output=True)
    bench = tmp_path / "runs/embedded"

    proc = subprocess.Popen([sys.executable, "-m", "cmml", "pretrain"], cwd=tmp_path, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(8)  # imports done, training under way (50 epochs take far longer)
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert not (bench / "backbone").exists() and not list(bench.glob(".backbone*"))

    stale = bench / ".backbone.abc123.tmp"  # what a SIGKILL inside the commit window leaves
    (stale / "sub").mkdir(parents=True)
    (stale / "sub/model.safetensors").write_bytes(b"half")
    p["pretrain"]["epochs"] = 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    subprocess.run([sys.executable, "-m", "cmml", "pretrain"], cwd=tmp_path, check=True, capture_output=True, env=ENV)
    assert (bench / "backbone/prov.json").is_file() and not stale.exists()
