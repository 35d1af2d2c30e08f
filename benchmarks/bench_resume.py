"""Time saved by resuming: a run's train stage killed with SIGKILL in its last task, at a given
share of that task's epochs, then rerun, against rerunning it from scratch (what a tool without
resume does).

In a temp project (the default embedded data and backbone settings, head+backbone fine-tuning of
``--tasks`` tasks with ``--epochs`` epochs each), all in one run: (1) the uninterrupted stage
command, (2) the same command killed once the last task's resume file records epoch
``kill_at * epochs``, then rerun (it keeps the finished tasks and resumes the last one), (3) the
checkpoints of (1) and (2) compared bit for bit. Prints the rerun's wall time against the full
stage's and the saving.

Usage: python benchmarks/bench_resume.py [--tasks 2] [--epochs 12] [--kill-at 0.75]
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
STAGE = "cmml/run/both70/finetune_full/seed0"
RUN = Path("runs/cmml/embedded/both70/finetune_full/seed0")


def cmd() -> list[str]:
    return [sys.executable, "-m", "cmml", "run", STAGE]


def timed(env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd(), env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--kill-at", type=float, default=0.75)
    args = ap.parse_args()
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["settings"] = {"both70": p["settings"]["both70"]}
    p["tasks"]["num_tasks"] = args.tasks
    p["pretrain"]["epochs"] = 1  # the backbone's quality does not matter for timing
    p["cmml"]["methods"] = {"finetune_full": {**p["cmml"]["methods"]["finetune_full"], "epochs": args.epochs}}
    p["cmml"]["experiments"] = {"main": {"methods": ["finetune_full"], "settings": ["both70"], "seeds": [0]}}
    env = {**os.environ, "CMML_WORKER": "0", "PYTHONPATH": str(ROOT / "src")}
    with tempfile.TemporaryDirectory(prefix="cmml-resume-") as tmp:
        os.chdir(tmp)
        Path("params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
        from cmml.pipeline.plan import plan

        for st in plan(p):
            if st.name.startswith(("code", "data/", "params")):
                subprocess.run([sys.executable, "-m", "cmml", "run", st.name], env=env, check=True, capture_output=True)
        ckpts = [RUN / f"ckpt/task{t}/checkpoint.pt" for t in range(args.tasks)]
        full = timed(env)
        reference = [torch.load(c, weights_only=True)["state"] for c in ckpts]
        for c in ckpts:
            shutil.rmtree(c.parent)
        target = max(1, int(args.kill_at * args.epochs)) - 1  # 0-based epoch index recorded in the resume file
        proc = subprocess.Popen(cmd(), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seen: list[Path] = []  # one resume file per task, in the order the tasks train
        while proc.poll() is None:
            seen += [f for f in sorted(Path(".cmml/resume").glob("*.pt")) if f not in seen]
            try:
                if len(seen) == args.tasks and torch.load(seen[-1], weights_only=False)["epoch"] >= target:
                    proc.send_signal(signal.SIGKILL)
                    break
            except (OSError, RuntimeError, EOFError):  # being renamed into place
                pass
            time.sleep(0.02)
        proc.wait()
        if proc.returncode != -signal.SIGKILL:
            raise SystemExit("the stage finished before it was killed: raise --epochs")
        resumed_wall = timed(env)
        resumed = [torch.load(c, weights_only=True)["state"] for c in ckpts]
        same = all(a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a) for a, b in zip(resumed, reference))
    print(f"train stage, {args.tasks} tasks x {args.epochs} epochs: uninterrupted {full:.1f} s; killed after epoch "
          f"{target + 1} of task {args.tasks - 1}, "
          f"rerun {resumed_wall:.1f} s (x{resumed_wall / full:.2f} of a restart, {full - resumed_wall:.1f} s saved); "
          f"checkpoints identical to the uninterrupted ones: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
