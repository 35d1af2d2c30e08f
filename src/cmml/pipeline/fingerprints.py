"""The ``code`` stage: write every stage group's code fingerprint file (see :mod:`cmml.pipeline.sources`).

A fingerprint file changes exactly when a module in its group's import closure changes in
anything but docstrings and comments. The stage depends on every source file of every closure
and rewrites all files when it runs: byte-identical where nothing changed, so DVC (content
hashes) reruns exactly the consumers of the files that did change. Snakemake compares
modification times and plans the whole DAG before running a job, so the Snakefile calls
:func:`refresh` while it is parsed: the stage runs in place whenever a fingerprint file is
missing or older than a source, so the rule itself never has to run (which would make Snakemake
rerun every consumer) and a rewritten but unchanged file matches the checksum Snakemake recorded
for its consumers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cmml.pipeline.sources import fingerprint_text


def fresh(stage: Any) -> bool:
    """Whether every output of the code stage exists and is newer than every source it depends on."""
    outs = [Path(o) for o in (*stage.outs, stage.sidecar)]
    if not all(p.is_file() for p in outs):
        return False
    oldest = min(p.stat().st_mtime for p in outs)
    return not any(Path(d).stat().st_mtime > oldest for d in stage.deps if Path(d).is_file())


def refresh(stages: list[Any], params: dict[str, Any]) -> bool:
    """Run the code stage of ``stages`` in place unless it is :func:`fresh`; whether it ran (Snakefile parse)."""
    from cmml.pipeline.stage import CODE_STAGE

    code = next(s for s in stages if s.name == CODE_STAGE)
    if fresh(code):
        return False
    run(code, params)
    return True


def run(stage: Any, params: dict[str, Any]) -> None:
    """Stage handler: write every fingerprint file of ``stage.args["files"]`` ({path: entry modules})."""
    from cmml.provenance.sidecar import stage_run

    with stage_run(stage, params) as sr:
        for out, entries in stage.args["files"].items():
            sr.tmp(out).write_text(fingerprint_text(tuple(entries)), encoding="utf-8")
