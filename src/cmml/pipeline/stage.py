"""A concrete job of the DAG, as Snakemake, DVC and the stage CLI all see it.

Every stage runs the same command, ``python -m cmml run <name>``; the CLI rebuilds the plan from
the params file, finds the stage by name and calls ``run(stage, params)`` of its ``handler``
module. A stage's code identity is the import closure of its entry modules (``handler`` plus
``entries``, e.g. the method module a train stage builds); it depends on that closure's
fingerprint file (``runs/code/<key>.json``, written by the ``code`` stage) instead of on the
source files themselves (see :mod:`cmml.pipeline.sources`).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from cmml.pipeline.sources import code_key

CODE_DIR = "runs/code"
CODE_STAGE = "code"
PARAMS_DIR = "runs/params"
PARAMS_STAGE = "params"


@dataclass(frozen=True)
class Stage:
    """One job: name, handler, resolved arguments, deps, outs, the params keys it reads."""

    name: str
    handler: str
    args: dict[str, Any]
    deps: list[str]
    outs: list[str]
    params: list[str]
    sidecar: str
    entries: tuple[str, ...] = ()
    dir_outs: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)
    gpu: bool = False
    nproc: int = 1  # processes the stage runs as (data-parallel ranks, see cmml.train.distributed)
    params_file: str = "params.yaml"
    family: str = ""
    args_in_cmd: bool = False  # the args are the stage's input (the params stage): its command carries their digest

    @property
    def code_entries(self) -> tuple[str, ...]:
        """Entry modules whose import closure is this stage's code."""
        return (self.handler, *self.entries)

    @property
    def code_file(self) -> str | None:
        """The fingerprint file this stage depends on (None for the code stage itself)."""
        return None if self.name == CODE_STAGE else f"{CODE_DIR}/{code_key(self.code_entries)}.json"

    @property
    def all_deps(self) -> list[str]:
        """Data deps plus the code fingerprint: what both workflow tools track."""
        return [*self.deps, *([self.code_file] if self.code_file else [])]

    @property
    def params_split(self) -> str | None:
        """The small JSON file of this stage's params values that its DVC stage depends on (written by the ``params`` stage).

        DVC parses a stage's params file once per stage and walks it once per key, so with hundreds
        of stages reading params.yaml itself dominates ``dvc status``; None for stages reading no
        params and for the ``params`` stage (which reads params.yaml).
        """
        return None if not self.params or self.name == PARAMS_STAGE else f"{PARAMS_DIR}/{self.dvc_name}.json"

    @property
    def args_digest(self) -> str:
        """A short digest of the stage's resolved arguments."""
        return hashlib.sha256(json.dumps(self.args, sort_keys=True).encode()).hexdigest()[:12]

    @property
    def cmd(self) -> list[str]:
        """argv of the stage command (identical for Snakemake and DVC).

        With ``args_in_cmd`` it ends with ``--plan <args digest>``: both tools rerun a stage whose
        command changed, so a plan change that alters what such a stage writes (e.g. a stage
        added by code, or a key a stage reads) reruns it even though no file it depends on changed.
        """
        argv = ["python", "-m", "cmml", "run", self.name]
        if self.params_file != "params.yaml":
            argv += ["--params", self.params_file]
        return [*argv, "--plan", self.args_digest] if self.args_in_cmd else argv

    @property
    def shell(self) -> str:
        """The command as one shell line."""
        return " ".join(self.cmd)

    @property
    def rule_name(self) -> str:
        """A Snakemake-legal rule name derived from the stage name."""
        return re.sub(r"[^0-9A-Za-z_]", "_", self.name)

    @property
    def dvc_name(self) -> str:
        """DVC-legal stage name (letters, digits, '_' and '-')."""
        return re.sub(r"[^0-9A-Za-z_-]", "-", self.name.replace("/", "-"))


def task_ckpt(out: str, task: int) -> str:
    """Task ``task``'s checkpoint directory inside a run's checkpoint output ``out`` (see :mod:`cmml.train.chain`)."""
    return f"{out}/task{task}"


def dir_sidecar(out: str) -> str:
    """Sidecar path of a directory output: beside it, so the directory's hash holds data only."""
    return f"{out}.prov.json"
