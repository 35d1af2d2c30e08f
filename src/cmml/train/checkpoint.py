"""What the train and evaluate stages share: the run context, method construction, checkpoints.

A checkpoint holds only what a method trains (``Method.trainable_state``) plus the config that
made it; the frozen backbone is referenced by the sha256 of its weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cmml.config import Run
from cmml.errors import DataError
from cmml.methods.base import Method, TaskInfo
from cmml.methods.registry import get_method, resolve_hparams
from cmml.models.backbone import Backbone, backbone_digest, load_backbone
from cmml.pipeline.plan import Paths
from cmml.train.device import seed_everything

FORMAT = "cmml-checkpoint/1"
CKPT_FILE = "checkpoint.pt"


@dataclass
class RunContext:
    """Everything a model stage of one run needs, resolved from params.yaml and the plan."""

    run: Run
    hp: dict[str, Any]
    method_name: str
    paths: Paths
    backbone_dir: Path
    backbone_sha256: str
    info: TaskInfo
    tasks: Any  # cmml.data.tasks.TaskSplit
    tokenizer: Any  # cmml.data.tokenizer.TextTokenizer

    @property
    def data_dir(self) -> Path:
        return Path(self.paths.data)

    @property
    def missing_dir(self) -> Path:
        return Path(self.paths.missing(self.run.setting, self.run.seed))


def backbone_dir(params: dict[str, Any]) -> Path:
    """The saved backbone: the pretrain stage's output (tiny) or ``backbone.pretrained``."""
    if params["backbone"]["source"] == "tiny":
        return Path(Paths(params).backbone)
    return Path(params["backbone"]["pretrained"])


def load_context(params: dict[str, Any], run: Run) -> tuple[RunContext, Backbone]:
    """Resolve the run's hyper-parameters, task split, tokenizer and (frozen) backbone."""
    from cmml.config import method_name
    from cmml.data.tasks import load_tasks, read_manifest
    from cmml.data.tokenizer import load_tokenizer

    paths = Paths(params)
    bdir = backbone_dir(params)
    tasks = load_tasks(Path(paths.tasks))
    info = TaskInfo(tuple(tasks.offsets), read_manifest(Path(paths.data))["label_type"] == "multi", params["tasks"]["scenario"])
    tok = load_tokenizer(bdir / "vocab.txt", params["benchmark"]["max_text_len"])
    ctx = RunContext(run=run, hp=resolve_hparams(params, run.method), method_name=method_name(params, run.method),
                     paths=paths, backbone_dir=bdir, backbone_sha256=backbone_digest(bdir), info=info,
                     tasks=tasks, tokenizer=tok)
    return ctx, load_backbone(bdir)


def build_method(ctx: RunContext, backbone: Backbone) -> Method:
    """The run's method with its initial state, seeded by the run seed (same init in every stage)."""
    seed_everything(ctx.run.seed)
    return get_method(ctx.method_name)(backbone, ctx.info, ctx.hp)


def save_checkpoint(path: Path, ctx: RunContext, method: Method, task: int) -> None:
    """Write the method's trainable state and the config that made it (``path`` is a temp file)."""
    torch.save({
        "format": FORMAT, "method": ctx.method_name, "run": ctx.run.method, "seed": ctx.run.seed,
        "setting": ctx.run.setting, "task": task, "hparams": ctx.hp, "backbone_sha256": ctx.backbone_sha256,
        "offsets": list(ctx.info.offsets), "state": method.trainable_state(),
    }, path)


def load_checkpoint(path: Path, ctx: RunContext, method: Method, task: int) -> None:
    """Load the checkpoint of ``task`` into ``method``; DataError naming the file on any mismatch."""
    if not path.is_file():
        raise DataError(f"{path}: checkpoint not found (run the train stage of task {task} first)")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise DataError(f"{path}: corrupt checkpoint, cannot be read ({type(exc).__name__})") from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise DataError(f"{path}: not a cmml checkpoint (expected format {FORMAT!r})")
    expect = {"method": ctx.method_name, "run": ctx.run.method, "task": task, "backbone_sha256": ctx.backbone_sha256,
              "offsets": list(ctx.info.offsets)}
    for key, want in expect.items():
        if ck.get(key) != want:
            raise DataError(f"{path}: checkpoint field '{key}' is {ck.get(key)!r}, expected {want!r}")
    method.load_trainable_state(ck["state"], str(path))
