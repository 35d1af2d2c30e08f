"""``cmml dvc-lock``: bring dvc.lock and the DVC cache up to date from the stages' sidecars.

A Snakemake run never touches DVC's records, so afterwards ``dvc status`` would call every stage
it ran stale, and ``dvc commit`` of hundreds of stages is slow. There is one dvc.lock beside each
generated dvc.yaml (see :mod:`cmml.pipeline.dvcgen`). Every sidecar already holds what
DVC records: the md5 and size of each input and output file (directories as their files), the
params values and the command. This module writes, per stage of the plan whose sidecar exists,
the dvc.lock entry DVC 3 itself writes (deps and outs sorted by path, ``<md5>.dir`` for
directories with size and nfiles, each stage's params file of :mod:`cmml.pipeline.params_split`
as a dependency) and links or copies each output file into the
local DVC cache (``.dvc/cache/files/md5/xx/yyy``, plus the ``.dir`` manifest object), so that
``dvc status`` agrees nothing is stale and ``dvc push`` can upload the run. The Snakefile calls it
when a run succeeds. Stages without a sidecar are left out (DVC then runs them).
"""

from __future__ import annotations

import json
import os
import shutil
from hashlib import md5
from pathlib import Path
from typing import Any

from cmml.errors import DataError
from cmml.pipeline.atomic import write_text
from cmml.pipeline.params_split import render as params_render
from cmml.pipeline.stage import Stage
from cmml.provenance.hashing import hash_file


def cache_root(root: Path) -> Path:
    """Where DVC 3 keeps objects: ``cache.dir`` from .dvc/config (then config.local), else .dvc/cache; + files/md5."""
    cache = root / ".dvc" / "cache"
    for name in ("config", "config.local"):
        cfg = root / ".dvc" / name
        section = None
        for line in cfg.read_text().splitlines() if cfg.is_file() else []:
            s = line.strip()
            if s.startswith("["):
                section = s.strip("[]").strip()
            elif section == "cache" and "=" in s and s.split("=", 1)[0].strip() == "dir":
                cache = (root / ".dvc" / s.split("=", 1)[1].strip().strip("'\"")).resolve()
    return cache / "files" / "md5"


def dir_object(files: dict[str, str]) -> bytes:
    """DVC 3's ``.dir`` manifest for {relpath: md5} (its md5 + ".dir" is the directory's hash)."""
    entries = [{"md5": m, "relpath": rel} for rel, m in sorted(files.items())]
    return json.dumps(entries, sort_keys=True).encode("utf-8")


def entry(path: str, records: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], dict[str, str]]:
    """The lock entry of ``path`` from sidecar ``records`` and the {file: md5} it covers."""
    if path in records:
        r = records[path]
        return {"path": path, "hash": "md5", "md5": r["md5"], "size": r["bytes"]}, {path: r["md5"]}
    prefix = path.rstrip("/") + "/"
    members = {k: r for k, r in records.items() if k.startswith(prefix)}
    if not members:
        raise DataError(f"{path}: not recorded in the sidecar")
    files = {k[len(prefix):]: r["md5"] for k, r in members.items()}
    digest = md5(dir_object(files)).hexdigest() + ".dir"
    return ({"path": path, "hash": "md5", "md5": digest, "size": sum(r["bytes"] for r in members.values()),
             "nfiles": len(members)}, {k: r["md5"] for k, r in members.items()})


def _store(cache: Path, src: Path, digest: str) -> None:
    obj = cache / digest[:2] / digest[2:]
    if obj.exists():
        return
    obj.parent.mkdir(parents=True, exist_ok=True)
    tmp = obj.with_name(f".{obj.name}.tmp")
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.chmod(tmp, 0o444)
    os.replace(tmp, obj)


def stage_lock(stage: Stage, rec: dict[str, Any], root: Path, cache: Path | None) -> dict[str, Any]:
    """One stage's dvc.lock entry from its sidecar ``rec`` (outputs cached when ``cache`` is given)."""
    values = {k: rec["params"][k] for k in sorted(stage.params)}
    deps = [entry(d, rec["inputs"])[0] for d in stage.all_deps]
    if stage.params_split:  # the stage's params file, as the params stage writes it from these values
        text = params_render(values).encode()
        deps.append({"path": stage.params_split, "hash": "md5", "md5": md5(text).hexdigest(), "size": len(text)})
    deps.sort(key=lambda d: d["path"])
    outs = []
    sidecar = root / stage.sidecar
    side = hash_file(sidecar)
    records = {**rec["outputs"], stage.sidecar: {"md5": side["md5"], "bytes": side["bytes"]}}
    for o in sorted({*stage.outs, stage.sidecar}):
        e, files = entry(o, records)
        outs.append(e)
        if cache is not None:
            for f, m in files.items():
                _store(cache, root / f, m)
            if e["md5"].endswith(".dir"):
                obj = cache / e["md5"][:2] / e["md5"][2:]
                if not obj.exists():
                    obj.parent.mkdir(parents=True, exist_ok=True)
                    obj.write_bytes(dir_object({k[len(o.rstrip('/')) + 1:]: v for k, v in files.items()}))
    body: dict[str, Any] = {"cmd": stage.shell}
    if deps:
        body["deps"] = deps
    if stage.params and not stage.params_split:
        body["params"] = {stage.params_file: values}
    body["outs"] = outs
    return body


def write_lock(stages: list[Stage], root: Path = Path("."), fill_cache: bool = True) -> tuple[int, int]:
    """Rewrite every dvc.lock (one beside each generated dvc.yaml) for the stages with a sidecar.

    Returns (stages locked, stages without a sidecar). A lock file none of whose stages has run is removed.
    """
    import yaml

    from cmml.pipeline.dvcgen import lock_of

    cache = cache_root(root) if fill_cache and (root / ".dvc").is_dir() else None
    locks: dict[str, dict[str, Any]] = {lock_of(st): {} for st in stages}
    skipped = 0
    for st in stages:
        path = root / st.sidecar
        if not path.is_file():
            skipped += 1
            continue
        try:
            rec = json.loads(path.read_text())
            locks[lock_of(st)][st.dvc_name] = stage_lock(st, rec, root, cache)
        except (OSError, ValueError, KeyError, DataError) as exc:
            raise DataError(f"{path}: cannot derive the dvc.lock entry of {st.name} ({exc})") from None
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    for lock, locked in sorted(locks.items()):
        if locked:
            write_text(root / lock, yaml.dump({"schema": "2.0", "stages": locked}, Dumper=dumper, sort_keys=False, width=4096))
        else:
            (root / lock).unlink(missing_ok=True)
    return sum(map(len, locks.values())), skipped


def main(params_file: str) -> int:
    """`cmml dvc-lock`: write dvc.lock (and fill the DVC cache) from the sidecars."""
    from cmml.pipeline.dvcgen import check_current
    from cmml.pipeline.plan import load, plan

    check_current(params_file)
    n, skipped = write_lock(plan(load(params_file), params_file))
    print(f"dvc.lock files: {n} stages recorded from their sidecars" + (f", {skipped} not run yet" if skipped else ""))
    return 0
