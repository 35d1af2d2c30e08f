"""``cmml status``: per family and experiment, which stages are done, stale (and why) or missing.

Read from the sidecars alone, without hashing data: a stage is *missing* when its sidecar or an
output is absent; *stale (params)* when a params value it read differs from params.yaml now;
*stale (code)* when its code fingerprint (the import closure, docstrings ignored) differs from the
current code; *stale (data)* when an input's recorded hashes differ from what its producer's
sidecar records now (the producer ran again) or the producer itself is not done. Otherwise done.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from cmml.config import subset
from cmml.families.registry import FAMILIES
from cmml.pipeline.sources import fingerprint_text
from cmml.pipeline.params_split import text as params_text
from cmml.pipeline.stage import CODE_STAGE, PARAMS_STAGE, Stage


def _records(stages: list[Stage], root: Path) -> dict[str, dict[str, Any] | None]:
    out: dict[str, dict[str, Any] | None] = {}
    for s in stages:
        try:
            out[s.name] = json.loads((root / s.sidecar).read_text())
        except (OSError, ValueError):
            out[s.name] = None
    return out


def _params_changed(rec: dict[str, Any], stage: Stage, params: dict[str, Any]) -> bool:
    """Whether the sidecar ``rec`` records other values of the stage's params keys than ``params`` holds."""
    return rec.get("params") != json.loads(json.dumps(subset(params, stage.params)))


def _files(records: dict[str, Any], path: str) -> dict[str, str]:
    prefix = path.rstrip("/") + "/"
    return {k: r.get("md5", "") for k, r in records.items() if k == path or k.startswith(prefix)}


def states(stages: list[Stage], params: dict[str, Any], root: Path = Path(".")) -> dict[str, str]:
    """{stage name: done | missing | stale (params|code|data)} in plan order."""
    recs = _records(stages, root)
    producer = {o: s for s in stages for o in s.outs}
    codes: dict[str, str] = {}
    result: dict[str, str] = {}
    for s in stages:
        rec = recs[s.name]
        if rec is None or not all((root / o).exists() for o in s.outs):
            result[s.name] = "missing"
            continue
        if _params_changed(rec, s, params):
            result[s.name] = "stale (params)"
            continue
        if s.name == PARAMS_STAGE:  # reads params.yaml as a whole: stale when a file it writes would change
            same = all((root / f).is_file() and (root / f).read_text() == params_text(params, keys)
                       for f, keys in s.args["files"].items())
            result[s.name] = "done" if same else "stale (params)"
            continue
        if s.name == CODE_STAGE:
            for f, entries in s.args["files"].items():
                codes[f] = fingerprint_text(tuple(entries))
            result[s.name] = "done" if all((root / f).is_file() and (root / f).read_text() == t for f, t in codes.items()) else "stale (code)"
            continue
        if s.code_file:
            if s.code_file not in codes:
                codes[s.code_file] = fingerprint_text(s.code_entries)
            recorded = recs.get(producer[s.code_file].name) if s.code_file in producer else None
            now = (root / s.code_file).read_text() if (root / s.code_file).is_file() else None
            if now != codes[s.code_file] or recorded is None:
                result[s.name] = "stale (code)"
                continue
        reason = "done"
        for d in s.all_deps:
            up = producer.get(d)
            if up is None:
                continue
            if result.get(up.name) != "done" or _files(rec["inputs"], d) != _files(recs[up.name]["outputs"], d):
                reason = "stale (data)"
                break
        result[s.name] = reason
    return result


STAMPS = ".cmml/params-stamps"


def params_stamps(stages: list[Stage], params: dict[str, Any], root: Path = Path(".")) -> dict[str, str]:
    """{stage name: stamp file} for every stage that reads params: an extra Snakemake input whose
    mtime is newer than the stage's outputs exactly when its sidecar records other params values
    than ``params`` holds now (else the epoch).

    Snakemake notices a params edit through the metadata of its own last run of a job; a job last
    run by DVC (or by ``cmml run``) has none, and Snakemake would leave it as it is. The stamp makes
    the edit visible to it whichever tool ran the stage last (called while the Snakefile is parsed).
    A stale stamp holds the sha256 of the sidecar it was made for: Snakemake ignores a newer input
    whose checksum equals the one it recorded at the job's last run, and that sidecar is never the
    one the job's last Snakemake run saw.
    """
    d = root / STAMPS
    d.mkdir(parents=True, exist_ok=True)
    reading = [s for s in stages if s.params]
    recs = _records(reading, root)
    out: dict[str, str] = {}
    for s in reading:
        stamp, side = d / s.rule_name, root / s.sidecar
        if not stamp.exists():
            stamp.touch()
            os.utime(stamp, (0, 0))
        rec = recs[s.name]
        if isinstance(rec, dict):
            stale = _params_changed(rec, s, params)
            newer = stamp.stat().st_mtime > side.stat().st_mtime
            if stale:
                digest = hashlib.sha256(side.read_bytes()).hexdigest()
                if not newer or stamp.read_text() != digest:
                    stamp.write_text(digest)
            elif newer:  # edited back before the stage reran
                os.utime(stamp, (0, 0))
        out[s.name] = f"{STAMPS}/{s.rule_name}"
    return out


def report(stages: list[Stage], params: dict[str, Any]) -> list[str]:
    """Lines per group: shared data and code stages, then each family's experiments."""
    st = states(stages, params)
    groups: dict[str, dict[str, int]] = {}
    examples: dict[str, str] = {}

    def add(group: str, state: str, name: str) -> None:
        groups.setdefault(group, {}).setdefault(state, 0)
        groups[group][state] += 1
        if state != "done":
            examples.setdefault(f"{group}|{state}", name)

    experiments = {fam: params[fam].get("experiments", {}) for fam in FAMILIES if fam in params}
    for s in stages:
        if not s.family:
            add(s.name.split("/")[0], st[s.name], s.name)
            continue
        parts = s.name.split("/")  # <family>/<kind>/<setting>/<method>/seed<k>
        hit = False
        if len(parts) >= 5:
            seed = int(parts[4].removeprefix("seed"))
            for exp, body in experiments.get(s.family, {}).items():
                if (parts[3] in body.get("methods", ()) and parts[2] in body.get("settings", body.get("orders", ()))
                        and seed in body.get("seeds", ())):
                    add(f"{s.family}/{exp}", st[s.name], s.name)
                    hit = True
        if not hit:  # a stage no experiment lists groups by its third name part
            add(f"{s.family}/{parts[2]}" if len(parts) >= 5 else s.family, st[s.name], s.name)
    lines = []
    for group, counts in groups.items():
        parts = [f"{k} {n}" for k, n in sorted(counts.items())]
        lines.append(f"{group:24s} " + ", ".join(parts))
        for state in sorted(counts):
            if state != "done":
                lines.append(f"{'':24s}   e.g. {examples[f'{group}|{state}']}: {state}")
    return lines


def main(params_file: str) -> int:
    """`cmml status`: print the table; exit 0 whatever the states (a report, not a check)."""
    from cmml.pipeline.plan import load, plan

    params = load(params_file)
    print("\n".join(report(plan(params, params_file), params)))
    return 0
