"""Pipeline benchmarks, all measured in one run on this machine (nothing is assumed):

1. wall time of the whole DAG (`snakemake --cores N`) for a params file, in a temp copy;
2. no-op rerun time of `snakemake` and of `dvc repro` on that finished DAG (DVC adopts the
   Snakemake outputs with `dvc commit` first, so its rerun really is a no-op check);
3. training throughput of the train stage (samples/s its loop records in the sidecar) vs a bare
   PyTorch loop over the same model (head + full ViLT, AdamW) and the same data;
4. per-stage fixed start-up cost: a light stage, a model stage run directly (imports torch +
   transformers) and the same model stage served by the warm worker.

Usage: python benchmarks/bench_pipeline.py [--params params.yaml] [--cores 2] [--skip-dag]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def sh(cmd: list[str], cwd: Path, **env: str) -> float:
    """Run ``cmd`` and return its wall time (raises with the tail of its output on failure)."""
    full_env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1", **env}
    if (cwd / "src/cmml").is_dir():  # the project copy's own code, not the installed checkout's
        full_env["PYTHONPATH"] = str(cwd / "src")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=full_env)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return wall


def project(dest: Path, params: dict) -> Path:
    """A temp copy of the project (code, workflow, git + DVC repo) with ``params``."""
    dest.mkdir(parents=True)
    for item in ("Snakefile", "workflow", "src", "pyproject.toml", ".dvcignore"):
        src = ROOT / item
        if src.is_dir():
            shutil.copytree(src, dest / item, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, dest / item)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"],
                ["cmml", "dvc-yaml"], ["git", "add", "-A"],
                ["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "bench"]):
        sh(cmd, dest)
    return dest


def bare_loop_throughput(proj: Path, params: dict, run: str, epochs: int) -> float:
    """samples/s of a plain PyTorch loop: same backbone, head, data, batch size and optimizer."""
    import torch
    import torch.nn.functional as F

    from cmml.data.dataset import load_split
    from cmml.data.tokenizer import load_tokenizer
    from cmml.models.backbone import load_backbone
    from cmml.pipeline.plan import find, plan

    os.chdir(proj)
    torch.set_num_threads(params["runtime"]["threads"] or os.cpu_count() or 1)
    seed = params["cmml"]["experiments"]["main"]["seeds"][0]
    setting = params["cmml"]["experiments"]["main"]["settings"][0]
    a = find(plan(params), f"cmml/run/{setting}/{run}/seed{seed}").args
    tok = load_tokenizer(Path(a["backbone"]) / "vocab.txt", params["benchmark"]["max_text_len"])
    data = load_split(Path(a["data"]), Path(a["tasks"]), "train", tok, task_ids=[0],
                      missing_dir=Path(a["missing"]), fill=params["data"]["fill"])
    backbone = load_backbone(a["backbone"])
    backbone.requires_grad_(True)
    head = torch.nn.Linear(backbone.hidden_size, data.num_classes)
    hp = params["cmml"]["methods"][run]
    opt = torch.optim.AdamW([*backbone.parameters(), *head.parameters()], lr=hp["lr"], weight_decay=hp["weight_decay"])
    n, bs = len(data), hp["batch_size"]
    whole = data.batch(torch.arange(len(data)))  # every image decoded up front, fill applied
    images, ids, mask = whole.pixel_values, whole.input_ids, whole.attention_mask
    samples, t0 = 0, time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(n)
        for i in range(0, n, bs):
            idx = perm[i:i + bs]
            length = int(mask[idx].sum(1).max())  # pad to the batch's longest text, as any sane loop does
            logits = head(backbone(ids[idx, :length], mask[idx, :length], images[idx]).text_cls)
            loss = F.cross_entropy(logits, data.labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            samples += len(idx)
    return samples / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--skip-dag", action="store_true", help="only the throughput and start-up measurements "
                    "(runs a 1-seed, 1-setting, fine-tune-only slice of the params instead of the whole DAG)")
    ap.add_argument("--bare-loop", metavar="PROJECT", help=argparse.SUPPRESS)
    args = ap.parse_args()
    params = yaml.safe_load(Path(args.params).read_text())
    run = "finetune_full"
    if args.skip_dag:
        main_exp = params["cmml"]["experiments"]["main"]
        params["cmml"]["experiments"] = {"main": {"methods": [run], "settings": main_exp["settings"][:1],
                                                  "seeds": main_exp["seeds"][:1]}}
    if args.bare_loop:
        print(bare_loop_throughput(Path(args.bare_loop), params, run, params["cmml"]["methods"][run]["epochs"]))
        return
    tmp = Path(tempfile.mkdtemp(prefix="cmml-bench-"))
    proj = project(tmp / "proj", params)
    dag = sh(["snakemake", "--cores", str(args.cores)], proj)
    noop_smk = sh(["snakemake", "--cores", str(args.cores)], proj)
    sh(["dvc", "commit", "-f", "-q"], proj)
    noop_dvc = sh(["dvc", "repro"], proj)
    check = subprocess.run([str(BIN / "cmml"), "check"], cwd=proj, capture_output=True, text=True).stdout.strip()
    print(f"DAG ({args.params}{', slice' if args.skip_dag else ''}; {check}): snakemake --cores {args.cores} wall {dag:.1f} s")
    print(f"no-op rerun: snakemake {noop_smk:.2f} s, dvc repro {noop_dvc:.2f} s")

    exp = params["cmml"]["experiments"]["main"]
    setting, seed = exp["settings"][0], exp["seeds"][0]
    reps = 3
    # Both measured cold, in fresh processes, 3 times each (median): the stage's own loop timing
    # (recorded in its sidecar) and the bare loop below, run by this script in a subprocess.
    side_path = proj / f"runs/cmml/{params['benchmark']['name']}/{setting}/{run}/seed{seed}/run.prov.json"
    train = [str(BIN / "python"), "-m", "cmml", "run", f"cmml/run/{setting}/{run}/seed{seed}"]
    stage_runs = []
    for _ in range(reps):
        sh(train, proj, CMML_WORKER="0")
        stage_runs.append(json.loads(side_path.read_text()))
    stage_sps = statistics.median(r["extra"]["train"]["task0"]["samples_per_s"] for r in stage_runs)
    bare_cmd = [str(BIN / "python"), __file__, "--bare-loop", str(proj), "--params", args.params] + (["--skip-dag"] if args.skip_dag else [])
    bare_sps = statistics.median(
        float(subprocess.run(bare_cmd, capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONPATH": str(proj / "src")}).stdout.split()[-1]) for _ in range(reps))
    print(f"train throughput ({run}, task 0, {stage_runs[0]['device']}, median of {reps} cold runs each): "
          f"stage {stage_sps:.0f} samples/s, bare PyTorch loop {bare_sps:.0f} samples/s, "
          f"ratio {stage_sps / bare_sps:.2f}x (target >= 0.9)")

    ev = ["run", f"cmml/run/{setting}/{run}/seed{seed}"]
    py = str(BIN / "python")
    empty = statistics.median(sh([py, "-c", "pass"], proj) for _ in range(reps))
    light = statistics.median(sh([py, "-m", "cmml", "run", "data/tasks"], proj) for _ in range(reps))
    direct = statistics.median(sh([py, "-m", "cmml", *ev], proj, CMML_WORKER="0") for _ in range(reps))
    sh([py, "-m", "cmml", *ev], proj)  # make sure the worker is up (spawned by an earlier stage or now)
    time.sleep(8)
    warm = statistics.median(sh([py, "-m", "cmml", *ev], proj) for _ in range(reps))
    imports = statistics.median(sh([py, "-c", "import torch, transformers.models.vilt.modeling_vilt"], proj) for _ in range(reps))
    print(f"start-up: python itself {empty:.2f} s; light stage (tasks) {light:.2f} s; "
          f"import torch + transformers ViLT {imports:.2f} s")
    print(f"run stage ({run}, whole command): direct {direct:.2f} s, via warm worker {warm:.2f} s, "
          f"ratio {direct / warm:.1f}x")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
