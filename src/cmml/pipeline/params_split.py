"""The ``params`` stage: each stage's params values as one small JSON file, for DVC.

DVC reads a stage's params by parsing the params file and walking the parsed tree once per key;
with hundreds of stages reading ``params.yaml`` that is most of a no-op ``dvc status`` (about
20 ms per stage). So each stage's dvc.yaml entry depends on ``runs/params/<stage>.json`` (see
:attr:`cmml.pipeline.stage.Stage.params_split`), which this stage writes from params.yaml: the
dotted keys the stage reads and their values, sorted. A file's bytes change exactly when one of
its values does, so after a params edit DVC reruns exactly the stages whose values changed. The
file is a plain dependency (one md5), not a ``params:`` entry: dvc.lock would otherwise repeat
every value of every stage, and DVC parses all lock files on every command (about a third of the
lock bytes of the default DAG); the values stay readable in the file itself and in each stage's
sidecar. The stage depends on the params file as a whole (one checksum instead of DVC walking
every key of it) and reruns after any edit, rewriting identical bytes for the stages the edit does
not concern. Snakemake compares the same values through each rule's ``params``; for it this stage
is a cheap leaf.
"""

from __future__ import annotations

import json
from typing import Any

from cmml.config import subset


def text(params: dict[str, Any], keys: list[str]) -> str:
    """The file content for a stage reading ``keys`` (stable: sorted keys, one line per key)."""
    return render(subset(params, keys))


def render(values: dict[str, Any]) -> str:
    """The file content for a stage's params ``values`` ({dotted key: value})."""
    return "{\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(values[k], sort_keys=True)}" for k in sorted(values)) + "\n}\n"


def run(stage: Any, params: dict[str, Any]) -> None:
    """Stage handler: write every stage's params file into the ``runs/params`` directory."""
    from cmml.provenance.sidecar import stage_run

    with stage_run(stage, params) as sr:
        out = sr.tmp(stage.args["out"])
        for path, keys in stage.args["files"].items():
            (out / path.rsplit("/", 1)[-1]).write_text(text(params, keys), encoding="utf-8")
