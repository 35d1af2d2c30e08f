"""What the train and evaluate stages share: the resolved run context, method construction, checkpoints.

:class:`RunContext` is built once per stage from the planned stage's arguments (paths, method
module, run, seed) and params, so nothing below the stage handler looks params up again.
A checkpoint holds only what a method trains (``Method.trainable_state``, buffers included) plus
the config that made it; the frozen backbone is referenced by the sha256 of its weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cmml.config import merged_block
from cmml.errors import DataError
from cmml.methods.base import Method, TaskContext, TaskInfo, load_method
from cmml.models.backbone import Backbone, backbone_digest, load_backbone
from cmml.train.device import seed_everything

FORMAT = "cmml-checkpoint/2"
CKPT_FILE = "checkpoint.pt"


@dataclass(frozen=True)
class RunContext:
    """Everything a model stage of one run needs, resolved once."""

    run: str  # method run name (params key)
    method_name: str  # registry name
    method_cls: type[Method]
    setting: str
    seed: int
    hp: dict[str, Any]
    data_dir: Path
    tasks_dir: Path
    missing_dir: Path
    backbone_dir: Path
    backbone_sha256: str
    info: TaskInfo
    tasks: Any  # cmml.data.tasks.TaskSplit
    tokenizer: Any  # cmml.data.tokenizer.TextTokenizer
    fill: str
    joint: bool


def load_context(args: dict[str, Any], params: dict[str, Any], section: str) -> tuple[RunContext, Backbone]:
    """Resolve a run's hyper-parameters, task split, tokenizer and frozen backbone from a stage's ``args``.

    ``section`` is the family's params section holding ``methods`` (e.g. ``cmml``).
    """
    from cmml.data.tasks import load_tasks, read_manifest
    from cmml.data.tokenizer import load_tokenizer

    cls = load_method(args["method_module"])
    block = merged_block(params[section]["methods"], args["run"], f"{section}.methods")
    hp = cls.resolve_hparams(block, f"params.yaml: {section}.methods.{args['run']}")
    data_dir, tasks_dir, bdir = Path(args["data"]), Path(args["tasks"]), Path(args["backbone"])
    tasks = load_tasks(tasks_dir)
    info = TaskInfo(tuple(tasks.offsets), read_manifest(data_dir)["label_type"] == "multi", params["tasks"]["scenario"])
    tok = load_tokenizer(bdir, params["benchmark"]["max_text_len"])
    ctx = RunContext(run=args["run"], method_name=args["method"], method_cls=cls, setting=args["setting"],
                     seed=int(args["seed"]), hp=hp, data_dir=data_dir, tasks_dir=tasks_dir,
                     missing_dir=Path(args["missing"]), backbone_dir=bdir, backbone_sha256=backbone_digest(bdir),
                     info=info, tasks=tasks, tokenizer=tok, fill=params["data"]["fill"], joint=bool(args["joint"]))
    return ctx, load_backbone(bdir)


def build_method(ctx: RunContext, backbone: Backbone) -> Method:
    """The run's method with its initial state, seeded by the run seed (same init in every stage)."""
    seed_everything(ctx.seed)
    return ctx.method_cls(backbone, ctx.info, ctx.hp)


def untrained(method: Method, device: torch.device) -> None:
    """Bring a freshly built method to the state task 0's training starts from (the FWT row)."""
    method.begin_task(TaskContext(task=0, data=None, device=device))


def save_checkpoint(path: Path, ctx: RunContext, method: Method, task: int) -> None:
    """Write the method's trainable state and the config that made it (``path`` is a temp file)."""
    torch.save({
        "format": FORMAT, "method": ctx.method_name, "run": ctx.run, "seed": ctx.seed,
        "setting": ctx.setting, "task": task, "hparams": ctx.hp, "backbone_sha256": ctx.backbone_sha256,
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
    expect = {"method": ctx.method_name, "run": ctx.run, "task": task, "backbone_sha256": ctx.backbone_sha256,
              "offsets": list(ctx.info.offsets)}
    for key, want in expect.items():
        if ck.get(key) != want:
            raise DataError(f"{path}: checkpoint field '{key}' is {ck.get(key)!r}, expected {want!r}")
    method.load_trainable_state(ck["state"], str(path))
