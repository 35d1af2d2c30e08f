"""`cmml audit` on a real three-stage chain built with StageRun (no torch).

prepare writes the directory runs/x/data; train reads it and writes runs/x/model; aggregate
reads the model and writes results/metrics.json and results/matrices/ with the file sidecar
results/agg.prov.json (like the real aggregate stage).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from cmml import cli
from cmml.config import params_hash
from cmml.pipeline.atomic import write_json
from cmml.pipeline.plan import Stage
from cmml.provenance import audit as audit_mod
from cmml.provenance.hashing import hash_file, hash_tree
from cmml.provenance.sidecar import stage_run

PARAMS = {"data": {"n": 3, "seed": 0}, "train": {"lr": 0.1, "epochs": 2}, "agg": {"title": "demo"}, "unrelated": 1}
SOURCES = {"common.py": "X = 1\n", "data.py": "def make(): ...\n", "train.py": "def fit(): ...\n", "agg.py": "def agg(): ...\n"}

A = Stage(name="prepare", kind="prepare", args={}, deps=["src/cmml/common.py", "src/cmml/data.py"], outs=["runs/x/data"],
          dir_outs=["runs/x/data"], params=["data"], sidecar="runs/x/data/prov.json")
B = Stage(name="train/x", kind="train", args={}, deps=["runs/x/data", "src/cmml/common.py", "src/cmml/train.py"],
          outs=["runs/x/model"], dir_outs=["runs/x/model"], params=["train.lr"], sidecar="runs/x/model/prov.json")
C = Stage(name="aggregate", kind="aggregate", args={},
          deps=["runs/x/model", "src/cmml/agg.py"], outs=["results/metrics.json", "results/matrices", "results/agg.prov.json"],
          dir_outs=["results/matrices"], params=["agg.title"], sidecar="results/agg.prov.json")


def run_chain(params: dict[str, Any]) -> None:
    """Run the three stages through the real sidecar machinery."""
    with stage_run(A, params) as run:
        d = run.tmp("runs/x/data")
        (d / "sub").mkdir()
        (d / "x.bin").write_bytes(bytes(range(256)) * params["data"]["n"])
        (d / "sub" / "y.txt").write_text("labels\n")
    with stage_run(B, params) as run:
        data = (Path("runs/x/data/x.bin").read_bytes(), Path("runs/x/data/sub/y.txt").read_text())
        (run.tmp("runs/x/model") / "w.bin").write_bytes(data[0][::-1] + str(params["train"]["lr"]).encode())
    with stage_run(C, params) as run:
        w = Path("runs/x/model/w.bin").read_bytes()
        run.tmp("results/metrics.json").write_text(json.dumps({"acc": len(w) % 97}))
        (run.tmp("results/matrices") / "acc.csv").write_text("1,0\n0,1\n")


@pytest.fixture
def chain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    for name, text in SOURCES.items():
        path = tmp_path / "src" / "cmml" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    run_chain(PARAMS)
    return tmp_path


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
        name: {"cmd": f"python -m cmml {name}",
               **{sec: [{"path": p, "hash": "md5", "md5": m, "size": 1} for p, m in items] for sec, items in body.items()}}
        for name, body in stages.items()}}
    (root / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))


def test_intact_chain_passes_and_prints_every_stage(chain: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = audit(capsys, "results/metrics.json")
    assert rc == 0, err
    lines = out.splitlines()
    ph = {s.name: params_hash(json.loads((chain / s.sidecar).read_text())["params"]) for s in (A, B, C)}
    assert lines[0] == f"aggregate  results/agg.prov.json  OK  params {ph['aggregate']}  code -"
    assert lines[1] == f"  train/x  runs/x/model/prov.json  OK  params {ph['train/x']}  code -"
    assert lines[2] == f"    prepare  runs/x/data/prov.json  OK  params {ph['prepare']}  code -"
    assert lines[-1].startswith("audit OK: 3 provenance records")
    assert err == ""
    # a directory, a sidecar itself and several paths at once; shared ancestors are verified once
    rc, out, _ = audit(capsys, "runs/x/model", "results/agg.prov.json", "runs/x/data/sub/y.txt")
    assert rc == 0
    assert out.count("prepare  runs/x/data/prov.json  OK") == 1
    assert "prepare  runs/x/data/prov.json  (verified above: OK)" in out
    rc, out, _ = audit(capsys, "results/metrics.json", quiet=True)
    assert (rc, out) == (0, "")


def test_flipped_byte_in_first_stage_output_is_named(chain: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = chain / "runs/x/data/x.bin"
    data = bytearray(f.read_bytes())
    data[10] ^= 1
    f.write_bytes(bytes(data))
    rc, out, err = audit(capsys, "results/metrics.json")
    assert rc == 1
    assert err.startswith("BROKEN: runs/x/data/x.bin: ")
    assert "expected sha256" in err and "found" in err
    assert "  train/x  runs/x/model/prov.json  BROKEN" in out
    assert "    prepare  runs/x/data/prov.json  BROKEN" in out
    # audited from the first stage itself, its own output check names the file
    rc, _, err = audit(capsys, "runs/x/data")
    assert rc == 1 and err.startswith("BROKEN: runs/x/data/x.bin: output of prepare (runs/x/data) changed")


def test_changed_param_is_named(chain: Path, capsys: pytest.CaptureFixture[str]) -> None:
    set_params(chain, "unrelated", 2)  # keys no stage recorded do not matter
    set_params(chain, "train.epochs", 9)
    assert audit(capsys, "results/metrics.json")[0] == 0
    set_params(chain, "train.lr", 0.2)
    rc, out, err = audit(capsys, "results/metrics.json")
    assert rc == 1
    assert err.strip() == "BROKEN: params changed since train/x (runs/x/model) was made: key train.lr recorded 0.1 now 0.2"
    assert "  train/x  runs/x/model/prov.json  BROKEN" in out
    set_params(chain, "train.lr", 0.1)
    set_params(chain, "data.seed", 5)  # prepare recorded the whole 'data' block: the leaf is named
    set_params(chain, "data.extra", True)
    rc, _, err = audit(capsys, "runs/x/data")
    assert rc == 1 and err.strip() == "BROKEN: params changed since prepare (runs/x/data) was made: key data.extra recorded (absent) now true"
    set_params(chain, "data.extra", None)
    rc, _, err = audit(capsys, "runs/x/data")
    assert rc == 1 and err.strip() == "BROKEN: params changed since prepare (runs/x/data) was made: key data.seed recorded 0 now 5"
    set_params(chain, "train.lr", None)
    rc, _, err = audit(capsys, "results/metrics.json")
    assert rc == 1 and err.strip().endswith("key train.lr recorded 0.1 now missing from params.yaml")


def test_changed_source_file_is_named(chain: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (chain / "src/cmml/data.py").write_text("def make(): return 1\n")
    rc, out, err = audit(capsys, "results/metrics.json")
    assert rc == 1
    assert err.startswith("BROKEN: code changed: src/cmml/data.py (expected sha256 ")
    assert "as recorded for prepare (runs/x/data)" in err
    (chain / "src/cmml/data.py").unlink()
    rc, _, err = audit(capsys, "runs/x/data")
    assert rc == 1 and "code changed: src/cmml/data.py" in err and "found no file" in err


def test_missing_intermediate_is_broken_unless_dvc_lock_vouches(chain: Path, capsys: pytest.CaptureFixture[str]) -> None:
    w = chain / "runs/x/model/w.bin"
    saved = w.read_bytes()
    lock_md5 = dvc_dir_hash(chain, "runs/x/model")  # before deleting: what `dvc commit` would record
    w.unlink()
    rc, _, err = audit(capsys, "results/metrics.json")
    assert rc == 1
    assert err.startswith("BROKEN: runs/x/model/w.bin: input of aggregate (results/agg.prov.json) is missing "
                          "and no dvc.lock record vouches for it (expected sha256 ")
    # the hand-written lock names the directory; the audit rebuilds DVC's .dir hash from train/x's record
    write_lock(chain, {"train": {"outs": [("runs/x/model", lock_md5)]}})
    rc, out, err = audit(capsys, "results/metrics.json")
    assert rc == 0, err
    assert "  runs/x/model  not materialised (in dvc.lock, not in the local DVC cache; `dvc pull` restores it)" in out
    assert "train/x  runs/x/model/prov.json" not in out  # the walk stops at the missing input
    write_lock(chain, {"train": {"outs": [("runs/x/model", "0" * 32 + ".dir")]}})  # another hash does not vouch
    assert audit(capsys, "results/metrics.json")[0] == 1
    # a file entry vouches for a missing file output
    w.write_bytes(saved)
    metrics_md5 = str(hash_file(chain / "results/metrics.json")["md5"])
    (chain / "results/metrics.json").unlink()
    rc, _, err = audit(capsys, "results/agg.prov.json")
    assert rc == 1 and err.startswith("BROKEN: results/metrics.json: output of aggregate (results/agg.prov.json) is missing")
    write_lock(chain, {"aggregate": {"outs": [("results/metrics.json", metrics_md5)]}})
    rc, out, err = audit(capsys, "results/agg.prov.json")
    assert rc == 0, err
    assert "  results/metrics.json  not materialised (in dvc.lock, not in the local DVC cache" in out


def test_dvc_lock_disagreement_names_the_stage(chain: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = str(hash_file(chain / "results/metrics.json")["md5"])
    write_lock(chain, {"aggregate": {"deps": [("runs/x/model", dvc_dir_hash(chain, "runs/x/model"))],
                                     "outs": [("results/metrics.json", good),
                                              ("results/matrices", dvc_dir_hash(chain, "results/matrices"))]},
                       "train": {"outs": [("runs/x/model", dvc_dir_hash(chain, "runs/x/model"))]}})
    assert audit(capsys, "results/metrics.json")[0] == 0
    write_lock(chain, {"aggregate": {"outs": [("results/metrics.json", "f" * 32)]}})
    rc, _, err = audit(capsys, "results/metrics.json")
    assert rc == 1
    assert err.strip() == (f"BROKEN: results/metrics.json: dvc.lock stage 'aggregate' (outs) records md5 {'f' * 32}, "
                           f"but results/agg.prov.json gives {good}")
    write_lock(chain, {"aggregate": {"deps": [("runs/x/model", "d" * 32 + ".dir")], "outs": [("results/metrics.json", good)]}})
    rc, _, err = audit(capsys, "results/metrics.json")
    assert rc == 1 and "runs/x/model: dvc.lock stage 'aggregate' (deps) records md5 dddd" in err
    write_lock(chain, {"train": {"outs": [("runs/x/model", "e" * 32 + ".dir")]}})
    rc, _, err = audit(capsys, "runs/x/model")
    assert rc == 1 and "runs/x/model: dvc.lock stage 'train' (outs) records md5 eeee" in err
    (chain / "dvc.lock").write_text("stages: [\n")
    rc, out, err = audit(capsys, "runs/x/model")
    assert rc == 1 and err.startswith(f"BROKEN: {chain / 'dvc.lock'}: not valid YAML")
    assert "train/x  runs/x/model/prov.json  OK" in out  # the rest of the walk still runs


def dvc(root: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, check=True, capture_output=True)


def test_real_dvc_lock_and_cache(chain: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Against dvc itself: `dvc commit` writes dvc.lock and the cache; `dvc checkout` restores."""
    stages = {
        "prepare": {"cmd": "true", "deps": A.source_files(), "outs": ["runs/x/data"]},
        "train": {"cmd": "true", "deps": B.deps, "outs": ["runs/x/model"]},
        "aggregate": {"cmd": "true", "deps": C.deps, "outs": C.outs},
    }
    (chain / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    dvc(chain, "init", "--no-scm", "-q")
    dvc(chain, "commit", "-f", "-q")
    rc, out, err = audit(capsys, "results/metrics.json")
    assert rc == 0, err
    shutil.rmtree(chain / "runs/x/data")
    rc, out, err = audit(capsys, "results/metrics.json")
    assert rc == 0, err
    assert "    runs/x/data  not materialised (in DVC cache; `dvc checkout` restores it)" in out
    dvc(chain, "checkout", "-q")
    rc, out, _ = audit(capsys, "results/metrics.json")
    assert rc == 0 and "    prepare  runs/x/data/prov.json  OK" in out
    # a stage re-run outside DVC leaves dvc.lock behind: the disagreement names the stage
    (chain / "src/cmml/agg.py").write_text("def agg(): return 2\n")
    with stage_run(C, PARAMS) as run:
        run.tmp("results/metrics.json").write_text("{}")
        (run.tmp("results/matrices") / "acc.csv").write_text("1\n")
    rc, _, err = audit(capsys, "results/metrics.json")
    assert rc == 1 and err.startswith("BROKEN: src/cmml/agg.py: dvc.lock stage 'aggregate' (deps) records md5 ")


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
    assert f"aggregate  results/agg.prov.json  WARN  params {params_hash({'agg.title': 'demo'})}  code {head[:7]}+dirty" in out
    assert "  WARN: aggregate (results/agg.prov.json) was made from a working tree with uncommitted changes" in out
    side = chain / B.sidecar
    rec = json.loads(side.read_text())
    rec["code"]["commit"] = "0123456789" * 4
    write_json(side, rec)
    rc, _, err = audit(capsys, "results/metrics.json")
    assert rc == 1 and err.strip() == (
        "BROKEN: code commit 0123456789012345678901234567890123456789 recorded for train/x (runs/x/model) "
        "is not in this git repository")


def test_unrecorded_path_and_cli_entry(chain: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (chain / "notes.txt").write_text("hi\n")
    assert cli.main(["audit", "results/metrics.json"]) == 0
    assert cli.main(["audit", "--quiet", "results/metrics.json"]) == 0
    capsys.readouterr()
    assert cli.main(["audit", "notes.txt"]) == 1
    assert capsys.readouterr().err.strip() == "BROKEN: no provenance record for notes.txt"
    (chain / "runs/x/data/prov.json").unlink()
    assert cli.main(["audit", "--quiet", "results/metrics.json"]) == 1
    assert capsys.readouterr().err.strip() == (
        "BROKEN: no provenance record for runs/x/data/sub/y.txt (input of train/x (runs/x/model))")


def test_large_dag_hashes_each_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """300 evaluation-like sidecars sharing one data directory, with a dvc.lock entry for every
    directory: each file (sidecars included) hashed once, and fast."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("k: 1\n")
    data = tmp_path / "runs/data"
    data.mkdir(parents=True)
    for i in range(40):
        (data / f"part{i:02d}.bin").write_bytes(bytes([i]) * 4096)
    data_rec = {"name": "prepare", "params": {}, "inputs": {}, "outputs": hash_tree([Path("runs/data")], tmp_path), "code": {}}
    write_json(data / "prov.json", data_rec)
    for i in range(300):
        ev = tmp_path / f"runs/eval{i}"
        ev.mkdir()
        (ev / "scores.json").write_text(str(i))
        write_json(ev / "prov.json", {"name": f"evaluate/{i}", "params": {"k": 1}, "params_hash": params_hash({"k": 1}),
                                       "inputs": data_rec["outputs"], "outputs": hash_tree([Path(f"runs/eval{i}")], tmp_path),
                                       "code": {}})
    write_json(tmp_path / "results/agg.prov.json", {
        "name": "aggregate", "params": {}, "inputs": hash_tree([Path(f"runs/eval{i}") for i in range(300)], tmp_path),
        "outputs": {}, "code": {}})
    data_md5 = dvc_dir_hash(tmp_path, "runs/data")
    write_lock(tmp_path, {"prepare": {"outs": [("runs/data", data_md5)]}} | {
        f"evaluate@{i}": {"deps": [("runs/data", data_md5)], "outs": [(f"runs/eval{i}", dvc_dir_hash(tmp_path, f"runs/eval{i}"))]}
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
    assert max(calls.values()) == 1 and len(calls) == 40 + 300 + 301  # data, scores, prov.json
    assert out.count("prepare  runs/data/prov.json  (verified above: OK)") == 299
    assert elapsed < 5, elapsed
