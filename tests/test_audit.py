"""`cmml audit` on a real chain built with StageRun (no torch), in a project copy of the package.

The chain is shaped like the pipeline's: data/prepare writes the directory runs/x/data;
cmml/train/x reads it and writes runs/x/model; cmml/aggregate reads the model and writes
results/metrics.json and results/matrices/ with the file sidecar results/agg.prov.json (like the
real aggregate stage). Directory sidecars lie beside their directories (runs/x/data.prov.json).
Each stage also depends on its code fingerprint file runs/code/<key>.json, written by the real
``code`` stage's handler from the source files of the stage's import closure; those source files
are the leaves of the chain. The stage bodies are the test's own (cheap), the handlers named in
the stages are real modules, so the recorded code is the real import closure.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cmml import cli
from cmml.config import params_hash
from cmml.pipeline import fingerprints, params_split, sources
from cmml.pipeline.atomic import write_json
from cmml.pipeline.dvcgen import render
from cmml.pipeline.plan import code_stage, params_stage
from cmml.pipeline.sources import closure, rel_path
from cmml.pipeline.stage import Stage, dir_sidecar
from cmml.provenance import audit as audit_mod
from cmml.provenance.hashing import hash_file, hash_tree
from cmml.provenance.sidecar import stage_run

ROOT = Path(__file__).resolve().parents[1]
PARAMS = {"data": {"n": 3, "seed": 0}, "train": {"lr": 0.1, "epochs": 2}, "agg": {"title": "demo"}, "unrelated": 1}
DATA, MODEL = "runs/x/data", "runs/x/model"
METRICS, MATRICES, AGG_SIDECAR = "results/metrics.json", "results/matrices", "results/agg.prov.json"
PREPARE_SRC = "src/cmml/data/prepare.py"  # in data/prepare's import closure only

A = Stage(name="data/prepare", handler="cmml.data.prepare", args={"out": DATA}, deps=[], outs=[DATA],
          dir_outs=[DATA], params=["data"], sidecar=dir_sidecar(DATA))
B = Stage(name="cmml/train/x", handler="cmml.families.cmml.train", entries=("cmml.methods.finetune",),
          args={"data": DATA, "out": MODEL}, deps=[DATA], outs=[MODEL], dir_outs=[MODEL], params=["train.lr"],
          sidecar=dir_sidecar(MODEL))
C = Stage(name="cmml/aggregate", handler="cmml.families.cmml.aggregate",
          args={"model": MODEL, "metrics": METRICS, "matrices": MATRICES}, deps=[MODEL],
          outs=[METRICS, MATRICES, AGG_SIDECAR], dir_outs=[MATRICES], params=["agg.title"], sidecar=AGG_SIDECAR)
P = params_stage([A, B, C])  # the params files DVC reads


CODE = code_stage({s.code_file: s.code_entries for s in (P, A, B, C) if s.code_file})  # as plan() builds it


def run_chain(params: dict[str, Any]) -> None:
    """Run the code stages (real handler) and the three stages through the real sidecar machinery."""
    fingerprints.run(CODE, params)
    params_split.run(P, params)
    with stage_run(A, params) as run:
        d = run.tmp(A.args["out"])
        (d / "sub").mkdir()
        (d / "x.bin").write_bytes(bytes(range(256)) * params["data"]["n"])
        (d / "sub" / "y.txt").write_text("labels\n")
    with stage_run(B, params) as run:
        data = Path(B.args["data"])
        x, y = (data / "x.bin").read_bytes(), (data / "sub/y.txt").read_text()
        (run.tmp(B.args["out"]) / "w.bin").write_bytes(x[::-1] + y.encode() + str(params["train"]["lr"]).encode())
    with stage_run(C, params) as run:
        w = (Path(C.args["model"]) / "w.bin").read_bytes()
        run.tmp(C.args["metrics"]).write_text(json.dumps({"acc": len(w) % 97}))
        (run.tmp(C.args["matrices"]) / "acc.csv").write_text("1,0\n0,1\n")


@pytest.fixture
def chain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A project with a copy of the package (the one the stages' code is read from) and the chain run in it."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(ROOT / "src/cmml", tmp_path / "src/cmml", ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(sources, "PKG_DIR", tmp_path / "src/cmml")  # as PYTHONPATH=<project>/src would
    sources.clear_caches()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    try:
        run_chain(PARAMS)
        yield tmp_path
    finally:
        sources.clear_caches()  # parsed from the copy: not for later tests


def audit(capsys: pytest.CaptureFixture[str], *paths: str, quiet: bool = False) -> tuple[int, str, str]:
    rc = audit_mod.main(list(paths), quiet=quiet)
    out, err = capsys.readouterr()
    return rc, out, err


def set_params(root: Path, dotted: str, value: Any) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    *parents, last = dotted.split(".")
    cur = params
    for p in parents:
        cur = cur[p]
    if value is None:
        del cur[last]
    else:
        cur[last] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params))


def dvc_dir_hash(root: Path, d: str) -> str:
    """DVC's own directory hash (dvc_data's Tree) of a workspace directory."""
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.tree import Tree

    tree = Tree()
    for f in sorted((root / d).rglob("*")):
        if f.is_file():
            tree.add(f.relative_to(root / d).parts, None, HashInfo("md5", str(hash_file(f)["md5"])))
    tree.digest()
    return str(tree.hash_info.value)


def write_lock(root: Path, stages: dict[str, dict[str, list[tuple[str, str]]]]) -> None:
    """A dvc.lock in DVC 3's format: {stage: {"deps"/"outs": [(path, md5)]}}."""
    lock = {"schema": "2.0", "stages": {
        name: {"cmd": f"python -m cmml run {name}",
               **{sec: [{"path": p, "hash": "md5", "md5": m, "size": 1} for p, m in items] for sec, items in body.items()}}
        for name, body in stages.items()}}
    (root / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))


def tree_line(depth: int, st: Stage, status: str = "OK") -> str:
    rec = json.loads(Path(st.sidecar).read_text())
    return f"{'  ' * depth}{st.name}  {st.sidecar}  {status}  params {params_hash(rec['params'])}  code -"


def test_intact_chain_passes_and_prints_every_stage(chain: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = audit(capsys, "results/metrics.json")
    assert rc == 0, err
    lines = out.splitlines()
    # children in the order of their inputs: the code fingerprint file (runs/code/...) first
    seen = f"  code  {CODE.sidecar}  (verified above: OK)"  # one code stage, printed in full once
    assert lines[:6] == [tree_line(0, C), tree_line(1, CODE), tree_line(1, B), f"  {seen}", tree_line(2, A), f"    {seen}"]
    assert lines[6].startswith("audit OK: 4 provenance records") and len(lines) == 7
    assert err == ""
    # the sidecar is beside its directory, and records the planned command and the code it ran
    assert not (chain / DATA / "prov.json").exists() and not (chain / MODEL / "prov.json").exists()
    rec = json.loads((chain / B.sidecar).read_text())
    assert rec["command"] == ["python", "-m", "cmml", "run", "cmml/train/x"]
    assert set(rec["inputs"]) == {B.code_file, f"{DATA}/sub/y.txt", f"{DATA}/x.bin"}
    assert set(rec["code"]["sources"]) == {rel_path(m) for m in closure(B.code_entries)} == set(rec["code"]["fingerprints"])
    assert "src/cmml/methods/finetune.py" in rec["code"]["sources"] and PREPARE_SRC not in rec["code"]["sources"]
    # the code stage's inputs are the source files: leaves of the chain, never "no provenance record"
    assert set(json.loads((chain / CODE.sidecar).read_text())["inputs"]) == set(CODE.deps) and PREPARE_SRC in CODE.deps
    # a directory, a sidecar itself and several paths at once; shared ancestors are verified once
    rc, out, _ = audit(capsys, MODEL, AGG_SIDECAR, f"{DATA}/sub/y.txt")
    assert rc == 0
    assert out.count(f"data/prepare  {A.sidecar}  OK") == 1
    assert f"data/prepare  {A.sidecar}  (verified above: OK)" in out
    rc, out, _ = audit(capsys, "results/metrics.json", quiet=True)
    assert (rc, out) == (0, "")


def test_flipped_byte_in_first_stage_output_is_named(chain: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = chain / DATA / "x.bin"
    data = bytearray(f.read_bytes())
    data[10] ^= 1
    f.write_bytes(bytes(data))
    rc, out, err = audit(capsys, "results/metrics.json")
    assert rc == 1
    assert err.startswith(f"BROKEN: {DATA}/x.bin: input of cmml/train/x ({MODEL}) changed since it was used ")
    assert "expected sha256" in err and "found" in err
    assert f"  cmml/train/x  {B.sidecar}  BROKEN" in out
    assert f"    data/prepare  {A.sidecar}  BROKEN" in out
    # audited from the first stage itself, its own output check names the file
    rc, _, err = audit(capsys, DATA)
    assert rc == 1 and err.startswith(f"BROKEN: {DATA}/x.bin: output of data/prepare ({DATA}) changed")


def test_changed_param_is_named(chain: Path, capsys: pytest.CaptureFixture[str]) -> None:
    set_params(chain, "unrelated", 2)  # keys no stage recorded do not matter
    set_params(chain, "train.epochs", 9)
    assert audit(capsys, "results/metrics.json")[0] == 0
    set_params(chain, "train.lr", 0.2)
    rc, out, err = audit(capsys, "results/metrics.json")
    assert rc == 1
    assert err.strip() == f"BROKEN: params changed since cmml/train/x ({MODEL}) was made: key train.lr recorded 0.1 now 0.2"
    assert f"  cmml/train/x  {B.sidecar}  BROKEN" in out
    set_params(chain, "train.lr", 0.1)
    set_params(chain, "data.seed", 5)  # prepare recorded the whole 'data' block: the leaf is named
    set_params(chain, "data.extra", True)
    rc, _, err = audit(capsys, DATA)
    assert rc == 1 and err.strip() == (f"BROKEN: params changed since data/prepare ({DATA}) was made: "
                                       "key data.extra recorded (absent) now true")
    set_params(chain, "data.extra", None)
    rc, _, err = audit(capsys, DATA)
    assert rc == 1 and err.strip() == f"BROKEN: params changed since data/prepare ({DATA}) was made: key data.seed recorded 0 now 5"
    set_params(chain, "train.lr", None)
    rc, _, err = audit(capsys, "results/metrics.json")
    assert rc == 1 and err.strip().endswith("key train.lr recorded 0.1 now missing from params.yaml")


def test_changed_source_file_is_named(chain: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = chain / PREPARE_SRC
    src.write_text(src.read_text() + "\nEDITED = True\n")
    rc, out, err = audit(capsys, "results/metrics.json")
    assert rc == 1
    # the code stage that fingerprinted it names it first, then the stage that ran it; stages whose code does not hold it stay OK
    assert err.startswith(f"BROKEN: {PREPARE_SRC}: input of code (runs/code) changed since it was used (expected sha256 ")
    assert f"BROKEN: code changed: {PREPARE_SRC} (expected sha256 " in out
    assert f"as recorded for data/prepare ({DATA})" in out
    assert tree_line(1, B) in out.splitlines() and tree_line(0, C) in out.splitlines()
    src.unlink()
    rc, _, err = audit(capsys, DATA)
    assert rc == 1 and f"code changed: {PREPARE_SRC}" in err and "found no file" in err


def edit_docstrings(text: str) -> str:
    """``text`` with "Edited. " inserted at the start of every module, class and function docstring."""
    lines = text.splitlines(keepends=True)
    nodes = [n for n in ast.walk(ast.parse(text))
             if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and ast.get_docstring(n)]
    spots = sorted(((d.lineno, d.col_offset) for d in (n.body[0].value for n in nodes)), reverse=True)  # type: ignore[attr-defined]
    for lineno, col in spots:
        line = lines[lineno - 1]
        at = min(i for i in (line.find('"', col), line.find("'", col)) if i >= 0)  # past a prefix such as r
        at += 3 if line[at:at + 3] in ('"""', "'''") else 1
        lines[lineno - 1] = line[:at] + "Edited. " + line[at:]
    return "".join(lines)


def test_docstring_edit_keeps_the_audit_ok_a_code_edit_breaks_it(chain: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Sidecars record each source's raw sha256 and its fingerprint (AST without docstrings): an
    edit of docstrings and comments only is accepted, any other edit is a broken link naming the file.
    The code stage reruns after any edit of its sources (what DVC and the Snakefile's refresh do)."""
    src = chain / PREPARE_SRC
    original = src.read_text()
    edited = edit_docstrings(original) + "# a trailing comment\n"
    assert edited.count("Edited. ") >= 2 and ast.dump(ast.parse(edited)) != ast.dump(ast.parse(original))
    src.write_text(edited)
    fp = chain / str(A.code_file)
    fp_before, sidecars_before = fp.read_bytes(), {s.sidecar: (chain / s.sidecar).read_bytes() for s in (A, B, C)}
    newest = max((chain / p).stat().st_mtime for p in (*CODE.outs, CODE.sidecar))
    os.utime(src, (newest + 5, newest + 5))  # newer than the fingerprint file, whatever the clock's resolution
    sources.clear_caches()
    assert fingerprints.refresh([CODE, P, A, B, C], PARAMS)  # the source is newer than the fingerprints: reruns
    assert fp.read_bytes() == fp_before  # same fingerprint: nothing downstream reruns
    assert {s.sidecar: (chain / s.sidecar).read_bytes() for s in (A, B, C)} == sidecars_before
    recorded = json.loads((chain / A.sidecar).read_text())["code"]["sources"][PREPARE_SRC]
    assert recorded != hash_file(src)["sha256"]  # data/prepare's sidecar records the file before the edit
    rc, out, err = audit(capsys, "results/metrics.json")
    assert rc == 0, err
    assert "BROKEN" not in out and "WARN" not in out and tree_line(2, A) in out.splitlines()

    src.write_text(edited + "EDITED = True\n")  # one statement more
    rc, out, err = audit(capsys, "results/metrics.json")
    assert rc == 1
    assert err.startswith(f"BROKEN: {PREPARE_SRC}: input of code (runs/code) changed since it was used")
    assert (f"BROKEN: code changed: {PREPARE_SRC} (expected sha256 {recorded[:12]} as recorded for "
            f"data/prepare ({DATA}), found {hash_file(src)['sha256'][:12]})") in out
    assert f"    data/prepare  {A.sidecar}  BROKEN" in out


def test_docstring_edit_is_accepted_before_the_code_stage_reruns(chain: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = chain / PREPARE_SRC
    src.write_text(edit_docstrings(src.read_text()))
    rc, out, err = audit(capsys, "results/metrics.json")
    assert rc == 0, err


def test_missing_intermediate_is_broken_unless_dvc_lock_vouches(chain: Path, capsys: pytest.CaptureFixture[str]) -> None:
    w = chain / MODEL / "w.bin"
    saved = w.read_bytes()
    lock_md5 = dvc_dir_hash(chain, MODEL)  # before deleting: what `dvc commit` would record
    w.unlink()
    rc, _, err = audit(capsys, "results/metrics.json")
    assert rc == 1
    assert err.startswith(f"BROKEN: {MODEL}/w.bin: input of cmml/aggregate (results/agg) is missing "
                          "and no dvc.lock record vouches for it (expected sha256 ")
    # the hand-written lock names the directory; the audit rebuilds DVC's .dir hash from cmml/train/x's record
    write_lock(chain, {B.dvc_name: {"outs": [(MODEL, lock_md5)]}})
    rc, out, err = audit(capsys, "results/metrics.json")
    assert rc == 0, err
    assert f"  {MODEL}  not materialised (in dvc.lock, not in the local DVC cache; `dvc pull` restores it)" in out
    assert f"cmml/train/x  {B.sidecar}" not in out  # the walk stops at the missing input
    write_lock(chain, {B.dvc_name: {"outs": [(MODEL, "0" * 32 + ".dir")]}})  # another hash does not vouch
    assert audit(capsys, "results/metrics.json")[0] == 1
    # a file entry vouches for a missing file output
    w.write_bytes(saved)
    metrics_md5 = str(hash_file(chain / METRICS)["md5"])
    (chain / METRICS).unlink()
    rc, _, err = audit(capsys, AGG_SIDECAR)
    assert rc == 1 and err.startswith(f"BROKEN: {METRICS}: output of cmml/aggregate (results/agg) is missing")
    write_lock(chain, {C.dvc_name: {"outs": [(METRICS, metrics_md5)]}})
    rc, out, err = audit(capsys, AGG_SIDECAR)
    assert rc == 0, err
    assert f"  {METRICS}  not materialised (in dvc.lock, not in the local DVC cache" in out


def test_dvc_lock_disagreement_names_the_stage(chain: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = str(hash_file(chain / METRICS)["md5"])
    write_lock(chain, {C.dvc_name: {"deps": [(MODEL, dvc_dir_hash(chain, MODEL))],
                                    "outs": [(METRICS, good), (MATRICES, dvc_dir_hash(chain, MATRICES))]},
                       B.dvc_name: {"outs": [(MODEL, dvc_dir_hash(chain, MODEL))]}})
    assert audit(capsys, "results/metrics.json")[0] == 0
    write_lock(chain, {C.dvc_name: {"outs": [(METRICS, "f" * 32)]}})
    rc, _, err = audit(capsys, "results/metrics.json")
    assert rc == 1
    assert err.strip() == (f"BROKEN: {METRICS}: dvc.lock stage 'cmml-aggregate' (outs) records md5 {'f' * 32}, "
                           f"but {AGG_SIDECAR} gives {good}")
    write_lock(chain, {C.dvc_name: {"deps": [(MODEL, "d" * 32 + ".dir")], "outs": [(METRICS, good)]}})
    rc, _, err = audit(capsys, "results/metrics.json")
    assert rc == 1 and f"{MODEL}: dvc.lock stage 'cmml-aggregate' (deps) records md5 dddd" in err
    write_lock(chain, {B.dvc_name: {"outs": [(MODEL, "e" * 32 + ".dir")]}})
    rc, _, err = audit(capsys, MODEL)
    assert rc == 1 and f"{MODEL}: dvc.lock stage 'cmml-train-x' (outs) records md5 eeee" in err
    (chain / "dvc.lock").write_text("stages: [\n")
    rc, out, err = audit(capsys, MODEL)
    assert rc == 1 and err.startswith(f"BROKEN: {chain / 'dvc.lock'}: not valid YAML")
    assert f"cmml/train/x  {B.sidecar}  OK" in out  # the rest of the walk still runs


def test_lock_entries_of_stages_no_longer_defined_are_ignored(chain: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """DVC keeps a removed stage's entry in dvc.lock (e.g. after the DAG changed shape) but ignores it;
    so does the audit, once a dvc.yaml says which stages exist."""
    good = str(hash_file(chain / METRICS)["md5"])
    write_lock(chain, {C.dvc_name: {"outs": [(METRICS, good)]}, "cmml-aggregate-old": {"outs": [(METRICS, "f" * 32)]}})
    rc, _, err = audit(capsys, "results/metrics.json")
    assert rc == 1 and "dvc.lock stage 'cmml-aggregate-old' (outs)" in err  # no dvc.yaml: every entry counts
    (chain / "dvc.yaml").write_text(yaml.safe_dump({"stages": {C.dvc_name: {"cmd": "python -m cmml run cmml/aggregate"}}}))
    assert audit(capsys, "results/metrics.json")[0] == 0


def dvc(root: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, check=True, capture_output=True)


def test_real_dvc_lock_and_cache(chain: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Against dvc itself, with the dvc.yaml the plan renders: `dvc commit` writes dvc.lock and the
    cache; `dvc checkout` restores; the directories' DVC hashes hold data only (sidecars beside)."""
    for path, text in render([CODE, P, A, B, C]).items():
        (chain / path).parent.mkdir(parents=True, exist_ok=True)
        (chain / path).write_text(text)
    dvc(chain, "init", "--no-scm", "-q")
    dvc(chain, "commit", "-f", "-q")
    rc, out, err = audit(capsys, "results/metrics.json")
    assert rc == 0, err
    lock = yaml.safe_load((chain / "pipelines/data/dvc.lock").read_text())["stages"]  # data/prepare's group
    data_md5 = next(o["md5"] for o in lock[A.dvc_name]["outs"] if o["path"] == DATA)
    assert data_md5 == dvc_dir_hash(chain, DATA)
    manifest = json.loads((chain / ".dvc/cache/files/md5" / data_md5[:2] / data_md5[2:]).read_text())
    assert sorted(e["relpath"] for e in manifest) == ["sub/y.txt", "x.bin"]  # no sidecar inside
    assert {o["path"] for o in lock[A.dvc_name]["outs"]} == {DATA, A.sidecar}  # the sidecar: an uncached out beside
    shutil.rmtree(chain / DATA)
    rc, out, err = audit(capsys, "results/metrics.json")
    assert rc == 0, err
    assert f"    {DATA}  not materialised (in DVC cache; `dvc checkout` restores it)" in out
    dvc(chain, "checkout", "-q")
    rc, out, _ = audit(capsys, "results/metrics.json")
    assert rc == 0 and f"    data/prepare  {A.sidecar}  OK" in out
    # a code edit, its code stage and the stage re-run outside DVC leave dvc.lock behind: the
    # disagreement names the stage and the changed fingerprint file
    agg = chain / "src/cmml/families/cmml/aggregate.py"
    agg.write_text(agg.read_text() + "\nEDITED = True\n")
    sources.clear_caches()
    fingerprints.run(CODE, PARAMS)
    with stage_run(C, PARAMS) as run:
        run.tmp(METRICS).write_text("{}")
        (run.tmp(MATRICES) / "acc.csv").write_text("1\n")
    rc, _, err = audit(capsys, "results/metrics.json")
    assert rc == 1 and err.startswith(f"BROKEN: {C.code_file}: dvc.lock stage 'cmml-aggregate' (deps) records md5 ")


def test_git_commit_and_dirty_flag(chain: Path, capsys: pytest.CaptureFixture[str]) -> None:
    git = ["git", "-c", "user.email=a@b", "-c", "user.name=t"]
    subprocess.run(git + ["init", "-q"], cwd=chain, check=True)
    (chain / "README").write_text("x\n")
    subprocess.run(git + ["add", "src", "README", "params.yaml"], cwd=chain, check=True)
    subprocess.run(git + ["commit", "-qm", "init"], cwd=chain, check=True)
    (chain / "README").write_text("y\n")  # tracked change: every stage records dirty=True
    run_chain(PARAMS)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=chain, capture_output=True, text=True).stdout.strip()
    rc, out, _ = audit(capsys, "results/metrics.json")
    assert rc == 0
    assert f"cmml/aggregate  {AGG_SIDECAR}  WARN  params {params_hash({'agg.title': 'demo'})}  code {head[:7]}+dirty" in out
    assert "  WARN: cmml/aggregate (results/agg) was made from a working tree with uncommitted changes" in out
    side = chain / B.sidecar
    rec = json.loads(side.read_text())
    rec["code"]["commit"] = "0123456789" * 4
    write_json(side, rec)
    rc, _, err = audit(capsys, "results/metrics.json")
    assert rc == 1 and err.strip() == (
        f"BROKEN: code commit 0123456789012345678901234567890123456789 recorded for cmml/train/x ({MODEL}) "
        "is not in this git repository")


def test_unrecorded_path_and_cli_entry(chain: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (chain / "notes.txt").write_text("hi\n")
    assert cli.main(["audit", "results/metrics.json"]) == 0
    assert cli.main(["audit", "--quiet", "results/metrics.json"]) == 0
    capsys.readouterr()
    assert cli.main(["audit", "notes.txt"]) == 1
    assert capsys.readouterr().err.strip() == "BROKEN: no provenance record for notes.txt"
    (chain / A.sidecar).unlink()
    assert cli.main(["audit", "--quiet", "results/metrics.json"]) == 1
    assert capsys.readouterr().err.strip() == (
        f"BROKEN: no provenance record for {DATA}/sub/y.txt (input of cmml/train/x ({MODEL}))")


def test_large_dag_hashes_each_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """300 evaluation-like sidecars (beside their directories) sharing one data directory, with a
    dvc.lock entry for every directory: each file hashed once (sidecars never: no directory holds
    one), and fast."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("k: 1\n")
    data = tmp_path / "runs/data"
    data.mkdir(parents=True)
    for i in range(40):
        (data / f"part{i:02d}.bin").write_bytes(bytes([i]) * 4096)
    data_rec = {"name": "data/prepare", "params": {}, "inputs": {}, "outputs": hash_tree([Path("runs/data")], tmp_path),
                "code": {}}
    write_json(tmp_path / dir_sidecar("runs/data"), data_rec)
    for i in range(300):
        ev = tmp_path / f"runs/eval{i}"
        ev.mkdir()
        (ev / "scores.json").write_text(str(i))
        write_json(tmp_path / dir_sidecar(f"runs/eval{i}"), {
            "name": f"cmml/evaluate/{i}", "params": {"k": 1}, "params_hash": params_hash({"k": 1}),
            "inputs": data_rec["outputs"], "outputs": hash_tree([Path(f"runs/eval{i}")], tmp_path), "code": {}})
    write_json(tmp_path / "results/agg.prov.json", {
        "name": "cmml/aggregate", "params": {}, "inputs": hash_tree([Path(f"runs/eval{i}") for i in range(300)], tmp_path),
        "outputs": {}, "code": {}})
    data_md5 = dvc_dir_hash(tmp_path, "runs/data")
    write_lock(tmp_path, {"data-prepare": {"outs": [("runs/data", data_md5)]}} | {
        f"cmml-evaluate-{i}": {"deps": [("runs/data", data_md5)],
                               "outs": [(f"runs/eval{i}", dvc_dir_hash(tmp_path, f"runs/eval{i}"))]}
        for i in range(300)})
    calls: dict[Path, int] = {}

    def counting(path: Path) -> dict[str, object]:
        calls[path] = calls.get(path, 0) + 1
        return hash_file(path)

    monkeypatch.setattr(audit_mod, "hash_file", counting)
    t0 = time.perf_counter()
    rc, out, err = audit(capsys, "results/agg.prov.json")
    elapsed = time.perf_counter() - t0
    assert rc == 0, err
    assert max(calls.values()) == 1 and len(calls) == 40 + 300  # data, scores
    assert out.count("data/prepare  runs/data.prov.json  (verified above: OK)") == 299
    assert elapsed < 5, elapsed
