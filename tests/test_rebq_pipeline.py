"""RebQ through the real pipeline: the stage CLIs on a tiny embedded project in a temp dir.

The module fixture copies params.yaml, shrinks it (8 classes, 2 tasks, tiny ViLT, rebq and
rebq_released on both70, seed 0) and runs the code fingerprints, ``data/prepare``, ``data/tasks``,
``data/pretrain/seed0`` and ``data/missing/both70/seed0`` with the project as cwd (only params.yaml
is needed there; source paths are recorded repository-relative). ``runtime.device`` is pinned to cpu so the cosine numbers below do not
depend on whether the machine has a GPU.

* the 2-task chain ``train`` task 0 -> ``train`` task 1 -> ``evaluate`` (rows init, 0, 1) for rebq
  (task-0 rows carried bit for bit into the task-1 checkpoint, task-1 rows trained) and
  rebq_released (task-1 rows exactly zero: the released bug of docs/rebq.md §6.1, reproduced
  through the stages);
* the issue's requirement on the pretrained backbone: for complete task-0 test samples, the
  reconstructed text query of their text-dropped version is closer (cosine) to the complete
  sample's frozen text query than the dummy-input query is.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from small import keep_families
from cmml.data.dataset import load_split
from cmml.data.modality import TEXT_MISSING
from cmml.methods.base import TaskContext
from cmml.pipeline.plan import find, plan
from cmml.train.checkpoint import build_method, load_context
from cmml.train.device import DeviceInfo
from cmml.train.loop import fit

ROOT = Path(__file__).resolve().parents[1]
RUNS = ("rebq", "rebq_released")
DATA = "runs/data/embedded"
BENCH = "runs/cmml/embedded"


def tiny_params() -> dict:
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    keep_families(p)  # the cmml family only
    p["benchmark"].update(num_classes=8, per_class={"pretrain": 24, "train": 16, "val": 2, "test": 8})
    p["tasks"]["num_tasks"] = 2
    # 6 epochs are not enough: the probe then scores text-only above complete (43.8 vs 29.7);
    # at 24 the frozen features need both modalities (complete 95, text-only 52, image-only 23).
    p["pretrain"]["epochs"] = 24
    p["runtime"].update(device="cpu", threads=2)  # the suite runs one test at a time on 2 cores
    p["settings"] = {"both70": p["settings"]["both70"]}
    # pool_size 16: 8 rows per task, 2 tasks x 8 orthogonal keys <= hidden size 64
    p["cmml"]["methods"] = {"rebq": {**p["cmml"]["methods"]["rebq"], "epochs": 2, "pool_size": 16},
                            "rebq_released": {"base": "rebq", "as_released": True}}
    p["cmml"]["experiments"] = {"main": {"methods": list(RUNS), "settings": ["both70"], "seeds": [0]}}
    return p


def cli(cwd: Path, *args: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DVC_STAGE"}
    proc = subprocess.run([sys.executable, "-m", "cmml", *args], cwd=cwd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise AssertionError(f"cmml {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rebq_pipeline")
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    params = yaml.safe_load((root / "params.yaml").read_text())
    for st in plan(params):
        if st.name == "code" or st.name.startswith("data/"):
            cli(root, "run", st.name)
    probes = json.loads((root / DATA / "backbone/seed0/pretrain_log.json").read_text())["modality_probes"]
    assert probes["complete"] > max(probes["text_only"], probes["image_only"]) + 10, probes
    return root


def test_benchmark_needs_both_modalities(project: Path) -> None:
    """Linear probes on the pretrained, frozen backbone (measured by the pretrain stage): complete
    inputs clearly beat either modality alone, and each alone is clearly above chance."""
    probes = json.loads((project / DATA / "backbone/seed0/pretrain_log.json").read_text())["modality_probes"]
    print(f"probe accuracy: complete {probes['complete']:.1f}, text only {probes['text_only']:.1f}, "
          f"image only {probes['image_only']:.1f}, chance {probes['chance']:.1f}")
    assert probes["complete"] > max(probes["text_only"], probes["image_only"]) + 10
    assert min(probes["text_only"], probes["image_only"]) > 1.5 * probes["chance"]


def load_ckpt(project: Path, run: str, task: int) -> dict:
    return torch.load(project / f"{BENCH}/both70/{run}/seed0/ckpt/task{task}/checkpoint.pt", map_location="cpu",
                      weights_only=True)


def sidecar(path: Path, name: str) -> dict:
    rec = json.loads(Path(f"{path}.prov.json").read_text())
    assert rec["name"] == name and rec["outputs"], rec
    return rec


@pytest.mark.parametrize("run", RUNS)
def test_two_task_chain_through_stage_cli(project: Path, run: str) -> None:
    cli(project, "run", f"cmml/run/both70/{run}/seed0")
    base = project / f"{BENCH}/both70/{run}/seed0"
    train = sidecar(base / "run", f"cmml/run/both70/{run}/seed0")
    assert {f"{BENCH}/both70/{run}/seed0/ckpt/task{t}/checkpoint.pt" for t in (0, 1)} <= set(train["outputs"])
    assert f"{BENCH}/both70/{run}/seed0/eval/scores.json" in train["outputs"]
    assert set(train["extra"]["train"]) == {"task0", "task1"} and set(train["extra"]["scores"]["rows"]) == {"init", "task0", "task1"}
    log1 = json.loads((base / "ckpt/task1/train_log.json").read_text())
    assert log1["task"] == 1 and log1["tasks_in_data"] == [1]

    ck0, ck1 = load_ckpt(project, run, 0), load_ckpt(project, run, 1)
    assert (ck0["task"], ck1["task"]) == (0, 1) and ck1["hparams"]["as_released"] == (run == "rebq_released")
    s0, s1 = ck0["state"], ck1["state"]
    pools = sorted({k.split(".")[1] for k in s0 if k.startswith("pools.")})
    assert pools == ["image", "memory", "text"]
    for name in pools:
        assert int(s0[f"pools.{name}.learned_tasks"]) == 1 and int(s1[f"pools.{name}.learned_tasks"]) == 2
        for kind in "pka":
            old0, old1 = s0[f"pools.{name}.{kind}.0"], s1[f"pools.{name}.{kind}.0"]
            new0, new1 = s0[f"pools.{name}.{kind}.1"], s1[f"pools.{name}.{kind}.1"]
            # task 1 started from task 0's checkpoint: the trained task-0 rows come back bit for bit
            # (fixed), or shrunk by AdamW's weight decay as in the released code (docs/rebq.md §6.17)
            assert old0.any(), (name, kind)
            if run == "rebq_released":
                ratio = old1.norm() / old0.norm()
                assert 0.99 < ratio < 1.0 and torch.allclose(old1, old0 * ratio, atol=1e-6), (name, kind, ratio)
            else:
                assert torch.equal(old0, old1), (name, kind)
            assert not new0.any()  # task-1 rows are unused before task 1
            if run == "rebq_released":
                assert not new1.any(), (name, kind)  # docs/rebq.md §6.1: never initialised, zero gradient
            else:
                assert new1.any(), (name, kind)
    assert not torch.equal(s0["head.weight"], s1["head.weight"])  # the head learns task 1 in both runs

    scores = json.loads((base / "eval/scores.json").read_text())
    assert set(scores["rows"]) == {"init", "task0", "task1"} and scores["counts"] == [32, 32]
    # the init row is the untrained model (RebQ's pools are empty before begin_task(0), so the
    # stage starts task 0 first); every row scores every task
    for row in scores["rows"].values():
        acc = row["accuracy"]
        assert len(acc) == 2 and all(math.isfinite(a) and 0 <= a <= 100 for a in acc), scores


@torch.no_grad()
def text_cosines(method, complete, dropped) -> dict[str, float]:
    """Mean cosine to the complete samples' frozen text query H0[:, 0] of: the dummy-input frozen
    query, the reconstructed query (RebQ.queries on the text-dropped samples) and, for scale, the
    mean complete query (a sample-independent guess)."""
    method.eval()
    idx = torch.arange(len(complete))
    cb, db = complete.batch(idx), dropped.batch(idx)
    bb = method.backbone
    target = bb(cb.input_ids, cb.attention_mask, cb.pixel_values).text_cls
    assert torch.equal(method.queries(cb)[0], target)  # complete samples query with exactly H0[:, 0]
    dummy = bb(db.input_ids, db.attention_mask, db.pixel_values).text_cls
    rebuilt = method.queries(db)[0]
    assert not torch.allclose(rebuilt, dummy)
    mean = target.mean(0, keepdim=True).expand_as(target)
    return {k: float(F.cosine_similarity(v, target).mean()) for k, v in
            (("dummy", dummy), ("rebuilt", rebuilt), ("mean_query", mean))}


@pytest.mark.parametrize("target", ["h1", "h0"])
def test_reconstruction_moves_text_missing_query_towards_complete(project: Path, target: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue requirement, with the pipeline's own rebq config (params.yaml block: alpha 0.01,
    lr, batch size, epochs 2 of the tiny project), task 0 trained exactly as the train stage does.

    For both reconstruction targets, ``h1`` (the released and params.yaml default: the
    memory-prompted complete sample) and ``h0`` (the frozen complete query, which complete samples
    use as their query), the reconstruction loss falls and the reconstructed text query of a
    text-dropped complete test sample moves closer on average to that sample's frozen complete
    query than before training. Only ``h0`` regresses onto that query itself, so only there must
    the reconstruction also beat the dummy-input query. Measured here (max_text_len 16, 2 epochs):
    h0 0.35 -> 0.46 vs dummy 0.44; h1 0.35 -> 0.38 (its target is H1, not H0).
    """
    monkeypatch.chdir(project)  # stage paths are relative to the project root
    params = yaml.safe_load((project / "params.yaml").read_text())
    stage = find(plan(params), "cmml/run/both70/rebq/seed0")
    ctx, backbone = load_context(stage.args, params, "cmml")
    assert ctx.hp["reconstruction_target"] == "h1" and ctx.hp["alpha"] == 0.01
    ctx.hp["reconstruction_target"] = target
    method = build_method(ctx, backbone)
    method.begin_task(TaskContext(task=0, data=None, device=torch.device("cpu")))

    tasks = ctx.tasks_dir
    train = load_split(ctx.data_dir, tasks, "train", ctx.tokenizer, task_ids=[0], missing_dir=ctx.missing_dir)
    test = load_split(ctx.data_dir, tasks, "test", ctx.tokenizer, task_ids=[0], missing_dir=ctx.missing_dir)
    complete = test.subset(test.codes == 0)
    dropped = complete.with_codes(torch.full_like(complete.codes, TEXT_MISSING))
    assert len(complete) >= 5 and bool((train.codes == 0).any())
    before = text_cosines(method, complete, dropped)

    hp, gen = ctx.hp, torch.Generator().manual_seed(ctx.seed * 1000)  # as cmml.families.cmml.train
    log = fit(method, lambda epoch: train.batches(hp["batch_size"], shuffle=True, generator=gen),
              lambda b: method.loss(b, 0), epochs=hp["epochs"], steps_per_epoch=math.ceil(len(train) / hp["batch_size"]),
              optimizer=method.configure_optimizer(), warmup=hp["warmup"],
              device=DeviceInfo(torch.device("cpu"), None, torch.get_num_threads()))
    after = text_cosines(method, complete, dropped)
    print(f"\n[{target}] n={len(complete)} cos to complete query: dummy {after['dummy']:.4f}, "
          f"reconstructed {after['rebuilt']:.4f} (untrained memory pool {before['rebuilt']:.4f}), "
          f"mean complete query {after['mean_query']:.4f}; L_rec {log['first_epoch']['rec']:.4f} -> "
          f"{log['last_epoch']['rec']:.4f}")
    assert log["last_epoch"]["rec"] < log["first_epoch"]["rec"]
    assert after["dummy"] == pytest.approx(before["dummy"])  # frozen backbone
    assert after["rebuilt"] > before["rebuilt"]
    if target == "h0":
        assert after["rebuilt"] > after["dummy"]
