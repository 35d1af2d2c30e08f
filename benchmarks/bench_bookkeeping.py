"""Bookkeeping cost per stage of Snakemake and DVC as the DAG grows (~10, ~100, ~1000 stages).

Each size is the same stage kinds with tiny work: the embedded benchmark at 8 classes and a few
samples per class, 2 tasks, one setting, head fine-tuning for one epoch, one pretraining epoch, the
``cmml`` family only; the DAG grows through the number of seeds (per seed: a missing table, a
backbone and the run's stage). In a fresh temp project per size and tool, all measured in this one run:

- from scratch: the tool's wall time minus the sum of the stages' own wall times (their sidecars),
  divided by the number of stages = the tool's bookkeeping per stage (both tools run one stage at
  a time here: ``snakemake --cores 1`` and ``dvc repro``, so the figures compare);
- no-op: a second ``snakemake`` / ``dvc repro``, and ``dvc status``, on the finished DAG.

It prints one table and the growth per stage from the smallest to the largest size (a no-op
visits every stage, so its total grows with the DAG; its cost per stage should not). Sizes are stage counts
to aim at; the real counts are printed.

Usage: python benchmarks/bench_bookkeeping.py [--sizes 10,100,1000] [--tools snakemake,dvc]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import yaml
from cmml.families.registry import FAMILIES
from bench_pipeline import project, sh  # the same temp project and timed command as the pipeline benchmark

ROOT = Path(__file__).resolve().parents[1]
FIXED = 7  # stages that do not grow with the seeds: code, params, prepare, tasks, aggregate, report, index
PER_SEED = 3


def params_for(seeds: int) -> dict:
    """The default params shrunk to tiny work, with ``seeds`` seeds."""
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    for family in FAMILIES:
        if family != "cmml":
            p.pop(family, None)
    p["benchmark"].update(num_classes=8, per_class={"pretrain": 4, "train": 4, "val": 1, "test": 2})
    p["tasks"]["num_tasks"] = 2
    p["pretrain"]["epochs"] = 1
    p["runtime"]["threads"] = 1
    p["settings"] = {"both70": p["settings"]["both70"]}
    p["cmml"]["methods"] = {"finetune_head": {**p["cmml"]["methods"]["finetune_head"], "epochs": 1}}
    p["cmml"]["experiments"] = {"main": {"methods": ["finetune_head"], "settings": ["both70"], "seeds": list(range(seeds))}}
    return p


def stage_seconds(proj: Path) -> tuple[int, float]:
    """(stages run, sum of their own wall times) from the sidecars."""
    walls = [json.loads(p.read_text())["wall_s"] for p in proj.glob("runs/**/*.prov.json")]
    walls += [json.loads(p.read_text())["wall_s"] for p in proj.glob("results/**/*.prov.json")]
    return len(walls), sum(walls)


def measure(tool: str, seeds: int, base: Path) -> dict[str, float]:
    proj = project(base / f"{tool}-{seeds}", params_for(seeds))
    cmd = ["snakemake", "--cores", "1", "-q"] if tool == "snakemake" else ["dvc", "repro", "-q"]
    wall = sh(cmd, proj)
    n, own = stage_seconds(proj)
    noop = sh(cmd, proj)
    status = sh(["dvc", "status", "-q"], proj) if tool == "dvc" else float("nan")
    shutil.rmtree(proj)
    return {"stages": n, "wall": wall, "own": own, "per_stage": (wall - own) / n, "noop": noop, "status": status}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10,100,1000", help="stage counts to aim at")
    ap.add_argument("--tools", default="snakemake,dvc")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="cmml-bookkeeping-") as tmp:
        for tool in args.tools.split(","):
            for size in sizes:
                seeds = max(1, round((size - FIXED) / PER_SEED))
                r = measure(tool, seeds, Path(tmp))
                rows.append((tool, r))
                print(f"{tool:9s} {r['stages']:5d} stages: wall {r['wall']:8.1f} s, stages' own {r['own']:8.1f} s, "
                      f"bookkeeping {r['per_stage']:6.2f} s/stage, no-op {r['noop']:6.1f} s"
                      + (f", dvc status {r['status']:5.1f} s" if tool == "dvc" else ""), flush=True)
    for tool in args.tools.split(","):
        mine = [r for t, r in rows if t == tool]
        if len(mine) > 1:
            lo, hi = mine[0], mine[-1]
            print(f"{tool}: {lo['stages']} -> {hi['stages']} stages: bookkeeping per stage x{hi['per_stage'] / lo['per_stage']:.2f}, "
                  f"no-op per stage x{(hi['noop'] / hi['stages']) / (lo['noop'] / lo['stages']):.2f} "
                  f"({1000 * lo['noop'] / lo['stages']:.0f} -> {1000 * hi['noop'] / hi['stages']:.0f} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
