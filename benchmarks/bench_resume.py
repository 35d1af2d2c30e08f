"""Time saved by intra-task resume: a train stage killed with SIGKILL at a given share of its
epochs, then rerun, against rerunning it from scratch (what a tool without resume does).

In a temp project (the default embedded data and backbone settings, head+backbone fine-tuning of
task 0 with ``--epochs`` epochs), all in one run: (1) the uninterrupted stage command, (2) the same
command killed once the resume file records epoch ``kill_at * epochs``, then rerun (it resumes),
(3) the checkpoints of (1) and (2) compared bit for bit. Prints the rerun's wall time against the
full stage's and the saving.

Usage: python benchmarks/bench_resume.py [--epochs 12] [--kill-at 0.75]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGE = "cmml/train/both70/finetune_full/seed0/task0"
CKPT = Path("runs/cmml/embedded/both70/finetune_full/seed0/task0/ckpt")


def cmd() -> list[str]:
    return [sys.executable, "-m", "cmml", "run", STAGE]


def timed(env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd(), env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--kill-at", type=float, default=0.75)
    args = ap.parse_args()
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["settings"] = {"both70": p["settings"]["both70"]}
    p["pretrain"]["epochs"] = 1  # the backbone's quality does not matter for timing
    p["cmml"]["methods"] = {"finetune_full": {**p["cmml"]["methods"]["finetune_full"], "epochs": args.epochs}}
    p["cmml"]["experiments"] = {"main": {"methods": ["finetune_full"], "settings": ["both70"], "seeds": [0]}}
    env = {**os.environ, "CMML_WORKER": "0", "PYTHONPATH": str(ROOT / "src")}
    with tempfile.TemporaryDirectory(prefix="cmml-resume-") as tmp:
        os.chdir(tmp)
        Path("params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
        from cmml.pipeline.plan import plan

        for st in plan(p):
            if st.name.startswith(("code/", "data/", "params")):
                subprocess.run([sys.executable, "-m", "cmml", "run", st.name], env=env, check=True, capture_output=True)
        full = timed(env)
        reference = torch.load(CKPT / "checkpoint.pt", weights_only=True)["state"]
        shutil.rmtree(CKPT)
        target = max(1, int(args.kill_at * args.epochs)) - 1  # 0-based epoch index recorded in the resume file
        proc = subprocess.Popen(cmd(), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None:
            files = list(Path(".cmml/resume").glob("*.pt"))
            if files and torch.load(files[0], weights_only=False)["epoch"] >= target:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
        proc.wait()
        if proc.returncode != -signal.SIGKILL:
            raise SystemExit("the stage finished before it was killed: raise --epochs")
        resumed_wall = timed(env)
        resumed = torch.load(CKPT / "checkpoint.pt", weights_only=True)["state"]
        same = resumed.keys() == reference.keys() and all(torch.equal(resumed[k], reference[k]) for k in resumed)
    print(f"train stage, {args.epochs} epochs: uninterrupted {full:.1f} s; killed after epoch {target + 1}, "
          f"rerun {resumed_wall:.1f} s (x{resumed_wall / full:.2f} of a restart, {full - resumed_wall:.1f} s saved); "
          f"checkpoint identical to the uninterrupted one: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
