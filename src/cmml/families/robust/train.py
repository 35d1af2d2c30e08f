"""Stage handler ``robust/train/<model>/seed<k>``: train one model of the robust family under every fill.

The training split holds every class of the benchmark (the robust family is not continual).
By kind:

* ``complete``: head (or head + backbone) on complete training data;
* ``ssf`` / ``lora`` / ``bitfit``: on the frozen ``start`` model, one adapter set per combination
  of available modalities, each trained with the task loss on the training split with exactly
  that combination present (the others filled by the stage's fill policy);
* ``dedicated``: one model per combination, each trained on that combination only;
* ``dropout``: one model; every epoch each training sample is, with probability ``p``, reduced to
  a uniformly drawn incomplete combination of its modalities (modality dropout).

A complete-data model sees no missing input and is trained once; every other model once per fill
(``robust.fills``), one checkpoint file each. Combinations are trained one after the other, each
with its own optimiser (AdamW) and warmup-cosine schedule and a data order seeded by (seed,
model, fill, combination). Each fit saves its state after every epoch under ``.cmml/resume/``
(:mod:`cmml.train.resume`), kept until the stage's outputs are committed: a killed stage redoes at
most the last epoch of the fits it had finished and resumes the running one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from cmml.families.robust.models import (Dedicated, Setup, adapted, build_trained, ckpt_file, dropped_presence,
                                         first_per_class, parameter_counts, plain, presence_of, save, stream_seed,
                                         task_loss)
from cmml.families.robust.plan import SECTION, all_models
from cmml.models.adapters import train_only
from cmml.models.backbone import backbone_digest
from cmml.pipeline.atomic import write_json
from cmml.provenance.sidecar import stage_run
from cmml.train.device import DeviceInfo, seed_everything, select_device
from cmml.train.loop import Resumable, fit
from cmml.train.resume import ResumeFile, stage_key

VOLATILE = ("wall_s", "samples_per_s", "resumed_after_epoch")  # in the sidecar only
ResumeFor = Callable[[str], ResumeFile]  # a fit's label -> its resume file


def load_setup(args: dict[str, Any], params: dict[str, Any], fill: str, device: DeviceInfo) -> tuple[Setup, Any]:
    """The stage's :class:`Setup` and training split (every class, ``train_per_class`` each, all modalities present)."""
    from cmml.data.dataset import Loading, load_split
    from cmml.data.tokenizer import load_tokenizer

    bdir = Path(args["backbone"])
    tok = load_tokenizer(bdir, params["benchmark"]["max_text_len"])
    data = first_per_class(load_split(Path(args["data"]), Path(args["tasks"]), "train", tok, fill=fill,
                                      loading=Loading.from_runtime(params["runtime"], device.device)),
                           params[SECTION]["train_per_class"])
    setup = Setup(bdir, backbone_digest(bdir), data.num_classes, data.multilabel, data.modalities)
    return setup, data


def train_one(module: Any, data: Any, hp: dict[str, Any], seed: int, label: str, device: DeviceInfo,
              multilabel: bool, params: list[torch.nn.Parameter], resume_for: ResumeFor,
              dropout: tuple[Setup, float] | None = None) -> dict[str, Any]:
    """Fit ``params`` of ``module`` on ``data`` (modality dropout redrawn per epoch when ``dropout``),
    saving the state after every epoch to ``resume_for(label)`` and resuming from it."""
    gen = torch.Generator().manual_seed(stream_seed(seed, label))
    opt = torch.optim.AdamW(params, lr=hp["lr"], weight_decay=hp["weight_decay"])

    def batches(epoch: int):
        split = data if dropout is None else data.with_present(dropped_presence(dropout[0], len(data), dropout[1], gen))
        for b in split.batches(hp["batch_size"], shuffle=True, generator=gen):
            yield b.to(device.device)

    def loss(b: Any) -> tuple[torch.Tensor, dict[str, float]]:
        return task_loss(module.logits(b), b.labels, multilabel), {}

    def get_state() -> dict[str, torch.Tensor]:
        return {str(i): p.detach().cpu().clone() for i, p in enumerate(params)}

    def set_state(state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for i, p in enumerate(params):
                p.copy_(state[str(i)])

    log = fit(module, batches, loss, epochs=hp["epochs"], steps_per_epoch=math.ceil(len(data) / hp["batch_size"]),
              optimizer=opt, warmup=hp["warmup"], device=device, label=label,
              resume=Resumable(resume_for(label), get_state, set_state, (gen,)))
    # through JSON: fresh objects in every run, so the checkpoint's pickle does not depend on whether the fit resumed
    return json.loads(json.dumps({k: v for k, v in log.items() if k not in VOLATILE}))


def train_fill(stage: Any, params: dict[str, Any], models: dict[str, dict[str, Any]], fill: str,
               device: DeviceInfo, resume_for: ResumeFor) -> tuple[dict[str, Any], dict[str, Any], int]:
    """Train the stage's model under ``fill``: (checkpoint record, state, training samples)."""
    a = stage.args
    name, seed = a["model"], int(a["seed"])
    hp = models[name]
    kind = hp["kind"]
    setup, data = load_setup(a, params, fill, device)
    seed_everything(stream_seed(seed, name, fill))
    label = stage.name if kind == "complete" else f"{stage.name}/{fill}"
    logs: dict[str, Any] = {}
    if kind in ("complete", "dropout"):
        model = plain(setup, hp["train_backbone"]).to(device.device)
        drop = (setup, hp["p"]) if kind == "dropout" else None
        logs["all"] = train_one(model, data, hp, seed, label, device, setup.multilabel,
                                [p for p in model.parameters() if p.requires_grad], resume_for, drop)
        state: dict[str, Any] = model.cpu().state()
    elif kind == "dedicated":
        state, parts = {}, {}
        for combo, key in zip(setup.combos, setup.keys):
            part = plain(setup, hp["train_backbone"]).to(device.device)
            sub = data.with_present(presence_of(combo, setup.modalities, len(data)))
            logs[key] = train_one(part, sub, hp, seed, f"{label}/{key}", device, setup.multilabel,
                                  [p for p in part.parameters() if p.requires_grad], resume_for)
            state[key] = part.cpu().state()
            parts[key] = part
        model = Dedicated(parts, setup)
    else:
        base = build_trained(setup, hp["start"], models[hp["start"]], {hp["start"]: a["start"]}, seed, models, fill)
        model = adapted(setup, base, kind, hp).to(device.device)
        for combo, key in zip(setup.combos, setup.keys):
            train_only(model.adapters, key)
            sub = data.with_present(presence_of(combo, setup.modalities, len(data)))
            logs[key] = train_one(model, sub, hp, seed, f"{label}/{key}", device, setup.multilabel,
                                  model.adapters.set_parameters(key), resume_for)
        train_only(model.adapters, None)
        model.cpu()
        state = model.adapters.adapter_state()
    record = {"model": name, "kind": kind, "seed": seed, "fill": None if kind == "complete" else fill,
              "backbone_sha256": setup.backbone_sha256, "hparams": hp, "combinations": setup.keys,
              "counts": parameter_counts(setup, model), "train": logs}
    return record, state, len(data)


def run(stage: Any, params: dict[str, Any]) -> None:
    """Train the stage's model under every fill (once for a complete-data model); one checkpoint per fill."""
    a = stage.args
    models = all_models(params, stage.params_file)
    kind = models[a["model"]]["kind"]
    device = select_device(params["runtime"])
    fills = [None] if kind == "complete" else list(a["fills"])
    key, files = stage_key(stage, params), []

    def resume_for(label: str) -> ResumeFile:  # one file per fit, all kept until the outputs are committed
        files.append(ResumeFile({**key, "fit": label}))
        return files[-1]

    done = {fill: train_fill(stage, params, models, fill or a["fills"][0], device, resume_for) for fill in fills}
    logs = {fill or "any": {"train": rec["train"], "counts": rec["counts"], "train_samples": n}
            for fill, (rec, _, n) in done.items()}
    with stage_run(stage, params, seed=int(a["seed"]), device=device.describe(), extra={"fills": logs}) as sr:
        out = sr.tmp(a["out"])
        for fill, (rec, state, _) in done.items():
            save(out / ckpt_file(kind, fill), rec, state)
        write_json(out / "train_log.json", logs)
    for f in files:
        f.clear()
