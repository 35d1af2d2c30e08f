"""The ``code`` stage: write each stage's code fingerprint file (see :mod:`cmml.pipeline.sources`).

A fingerprint file changes exactly when a module in its stage's import closure changes in
anything but docstrings and comments, so DVC (content hashes) reruns exactly the affected
stages. Snakemake compares modification times, and plans the whole DAG before running a job,
so the Snakefile calls :func:`refresh` while it is parsed: an unchanged file is only touched
(newer than the sources, and its recorded checksum still matches, so nothing downstream
reruns), a changed one is rewritten (so its consumers rerun). One ``code/<key>`` stage per
fingerprint file, whose deps are that closure's source files, so a new stage group or a new
source file never rewrites another group's fingerprint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cmml.pipeline.sources import fingerprint_text


def refresh(stages: list[Any], params: dict[str, Any]) -> list[str]:
    """Re-run, in place, every ``code/*`` stage whose outputs exist but are older than a source.

    Used by the Snakefile while it is parsed; returns the names of the stages re-run. A stage whose
    fingerprint is unchanged rewrites identical bytes (so the checksum Snakemake recorded still
    matches and nothing downstream reruns) and a fresh sidecar (the sources' new sha256).
    """
    done = []
    for st in stages:
        outs = [Path(st.outs[0]), Path(st.sidecar)]
        if not st.name.startswith("code/") or not all(p.is_file() for p in outs):
            continue
        oldest = min(p.stat().st_mtime for p in outs)
        if any(Path(d).stat().st_mtime > oldest for d in st.deps if Path(d).is_file()):
            run(st, params)
            done.append(st.name)
    return done


def run(stage: Any, params: dict[str, Any]) -> None:
    """Stage handler: write one stage group's fingerprint file."""
    from cmml.provenance.sidecar import stage_run

    with stage_run(stage, params) as sr:
        sr.tmp(stage.args["out"]).write_text(fingerprint_text(tuple(stage.args["entries"])), encoding="utf-8")
