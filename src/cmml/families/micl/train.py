"""Stage handler ``micl/run/<order>/<run>/seed<k>``: the steps of one run in sequence, then their evaluation.

Step t starts from step t-1's checkpoint. The checkpoint (``ckpt.pt``) holds the trainable tensors
(adapters, LoRA, merged LoRA deltas) and the method's state, one directory per step
(:mod:`cmml.train.chain`); joint training has one step that sees every task of the order. AdamW with
a linear warm-up then cosine decay, a fixed number of epochs (no early stopping: there is no val
split at this scale), the last partial batch of each epoch kept. The state after every epoch is kept
under ``.cmml/resume/`` (:mod:`cmml.train.resume`): a killed stage keeps its finished steps, resumes
the unfinished one after its last finished epoch and writes the checkpoints an uninterrupted run writes.

Evaluation (:mod:`cmml.families.micl.evaluate`) runs in the same stage, before the outputs are
committed: it reads exactly the params training reads (the generation settings drive MoInCL's
pseudo targets during training too) and costs about a second, so a stage of its own would only add
the workflow tools' per-stage cost.
"""

from __future__ import annotations

import copy
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch

from cmml.families.micl.evaluate import evaluate
from cmml.families.micl.examples import to_example
from cmml.families.micl.methods.base import MethodContext
from cmml.families.micl.methods.registry import method_class
from cmml.families.micl.model import CKPT, MiclModel, build_model, load_checkpoint, load_samples
from cmml.pipeline.atomic import write_json
from cmml.pipeline.stage import task_ckpt
from cmml.train.chain import train_chain
from cmml.train.device import seed_everything, select_device
from cmml.train.resume import ResumeFile

def frozen(model: MiclModel) -> MiclModel:
    """A frozen, eval-mode copy of ``model``."""
    return copy.deepcopy(model).eval().requires_grad_(False)


def run(stage: Any, params: dict[str, Any]) -> None:
    """Train every step of one run in sequence, write their checkpoints, then score each on the tasks it has seen."""
    a, cfg = stage.args, params["micl"]
    seed = int(a["seed"])
    device = select_device(params["runtime"])
    cls = method_class(a["method"])
    tasks = list(a["tasks"])
    corpus = json.loads((Path(a["data"]) / "corpus.json").read_text())

    def step(step: int, prev: Path | None, out: Path, resume: ResumeFile) -> dict[str, Any]:
        seed_everything(seed * 1000 + step)
        gen = torch.Generator().manual_seed(seed * 1000 + step)
        model = build_model(Path(a["pretrained"]), cfg["lora"])
        extra: dict[str, Any] = load_checkpoint(prev, model) if prev is not None else {}
        data = load_samples(Path(a["data"]), model, tasks[: step + 1], "train")
        model.to(device.device)
        previous = frozen(model) if cls.NEEDS_PREVIOUS and step > 0 else None
        hp = a["hparams"][str(step)]
        ctx = MethodContext(hp=hp, model=model, step=step, tasks=tasks, generator=gen, device=device.device,
                            previous=previous, extra=extra, data=data, instructions=corpus["instructions"],
                            generation=cfg["generation"])
        method = cls(ctx)
        if method.merge_at_start():
            model.merge_lora(gen)
        method.begin_task()
        pool = [s for t in (tasks if cls.JOINT else [tasks[step]]) for s in data[t]]
        bs, epochs = int(hp["batch_size"]), int(hp["epochs"])
        steps = epochs * math.ceil(len(pool) / bs)
        params_ = list(model.trainable().values())
        opt = torch.optim.AdamW(params_, lr=float(hp["lr"]), weight_decay=float(hp["weight_decay"]))
        warm = max(1, int(float(hp["warmup"]) * steps))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda k: (k + 1) / warm if k < warm else 0.5 * (1 + math.cos(math.pi * (k - warm) / max(1, steps - warm))))
        log: dict[str, list[float]] = {}
        start, saved = 0, resume.load()  # saved after every epoch, outside the declared outputs
        if saved is not None and saved.get("epochs") == epochs:
            model.load_trainable_state(saved["model"], str(resume.path))
            opt.load_state_dict(saved["optimizer"])
            sched.load_state_dict(saved["scheduler"])
            gen.set_state(saved["generator"])
            torch.set_rng_state(saved["torch_rng"])
            method.restore_progress(saved["progress"])
            log, start = saved["log"], saved["epoch"] + 1
            print(f"{stage.name} step {step}: resuming after epoch {start}/{epochs}", file=sys.stderr, flush=True)
        model.train()
        model.encoders.eval()
        for epoch in range(start, epochs):
            sums: dict[str, float] = {}
            order = torch.randperm(len(pool), generator=gen).tolist()
            for k in range(0, len(pool), bs):
                batch = [to_example(pool[i], gen) for i in order[k:k + bs]]
                loss, parts = method.loss(batch)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                for n, v in parts.items():
                    sums[n] = sums.get(n, 0.0) + v
            n_batches = math.ceil(len(pool) / bs)
            for n, v in sums.items():
                log.setdefault(n, []).append(round(v / n_batches, 4))
            method.end_epoch(epoch)
            if epoch + 1 < epochs:
                resume.save({"epochs": epochs, "epoch": epoch, "model": model.trainable_state(),
                             "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "generator": gen.get_state(),
                             "torch_rng": torch.get_rng_state(), "progress": method.progress(), "log": log})
        model.eval()
        state = method.end_task()
        info = {"task": tasks[step] if not cls.JOINT else tasks, "train_samples": len(pool), "steps": steps,
                "loss_per_epoch": log, **{k: v for k, v in state.items() if isinstance(v, (int, float, str))}}
        torch.save({"trainable": {k: v.cpu() for k, v in model.trainable_state().items()}, "extra": state}, out / CKPT)
        write_json(out / "train_log.json", info)
        return info

    train_chain(stage, params, a["out"], a["task_ids"], step, seed=seed, device=device.describe(),
                finish=lambda sr: evaluate(a, cfg, device.device,
                                           {t: Path(task_ckpt(str(sr.tmp(a["out"])), t)) for t in a["task_ids"]}, sr))
