"""`cmml audit`: walk the provenance chain back from artefacts and verify every link.

For each path the audit finds the sidecar that lists it among its outputs (nearest ancestor
directory first: ``D/prov.json``, then ``D/*.prov.json``), re-hashes that sidecar's outputs,
checks its recorded inputs against the workspace, its params against the params file, its
source files against the current code and its git commit against the repository, then recurses
into the sidecars of its inputs. Each sidecar is verified once and each file hashed once.

When DVC lock files exist (``dvc.lock`` in the project root and beside each generated
``pipelines/**/dvc.yaml``), each sidecar is also compared with the dvc.lock stage that owns its outputs (the stage whose ``outs`` contain the sidecar or its outputs):
file entries against the md5 in the sidecar, directory entries (``<md5>.dir``) against DVC 3's
directory hash rebuilt from the sidecar. That hash is the md5 of the directory manifest
``json.dumps(sorted([{"md5": ..., "relpath": ...}], key=relpath), sort_keys=True)`` plus
``".dir"`` (``dvc_data.hashfile.tree.Tree.digest``; confirmed against ``dvc repro`` with
dvc 3.67.1). DVC hashes every file of a directory, dot-files included, except names matched by
``.dvcignore`` (cmml ignores Snakemake's ``.snakemake_timestamp``); files the sidecars do not
record are hashed from the workspace. Only slash-free ``.dvcignore`` name patterns are applied;
entries without ``hash: md5`` (DVC 2 ``md5-dos2unix``) are skipped.

dvc.lock paths are taken relative to the project root (every generated stage runs there); an
unreadable dvc.lock is a broken link. Lock entries of stages the sibling dvc.yaml (when there is one) no
longer defines are ignored, as DVC ignores them.

A recorded file missing from the workspace is not a failure when dvc.lock vouches for it:
a file entry with the same md5, or a directory entry whose manifest (from the local DVC cache,
or rebuilt from the producing sidecar) lists it with the same md5. The walk stops there.
"""

from __future__ import annotations

import fnmatch
import json
import os
import posixpath
import re
import subprocess
import sys
from dataclasses import dataclass, field
from hashlib import md5
from pathlib import Path
from typing import Any

from cmml.config import get, params_hash
from cmml.errors import ConfigError, DataError
from cmml.provenance.dvclock import cache_root
from cmml.provenance.hashing import DIR_SIDECAR, SIDECAR_SUFFIX, expand, file_fingerprint, hash_file, is_sidecar

BROKEN, WARN, OK = "BROKEN", "WARN", "OK"
DVC_LOCK = "dvc.lock"
_SHA = re.compile(r"[0-9a-f]{7,64}")


def dvc_dir_md5(manifest: dict[str, str]) -> str:
    """DVC 3's hash of a directory from {relpath: md5} of every file in it."""
    entries = [{"md5": m, "relpath": rel} for rel, m in sorted(manifest.items())]
    return md5(json.dumps(entries, sort_keys=True).encode("utf-8")).hexdigest() + ".dir"


def _parents(path: str) -> list[str]:
    """Ancestor directories of a root-relative posix path, nearest first ("" is the root)."""
    out = []
    while path:
        path = posixpath.dirname(path)
        out.append(path)
    return out


def is_source(path: str) -> bool:
    """Whether ``path`` is package source code (git-tracked, a leaf of the chain; no stage makes it)."""
    return path.startswith("src/") and path.endswith(".py")


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _param_diff(key: str, old: Any, new: Any) -> list[tuple[str, str, str]]:
    """(dotted key, recorded, now) for each differing leaf of two param values."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[tuple[str, str, str]] = []
        for k in sorted(set(old) | set(new), key=str):
            sub = f"{key}.{k}"
            if k not in old or k not in new:
                out.append((sub, _canon(old[k]) if k in old else "(absent)", _canon(new[k]) if k in new else "(absent)"))
            else:
                out += _param_diff(sub, old[k], new[k])
        return out
    return [] if _canon(old) == _canon(new) else [(key, _canon(old), _canon(new))]


@dataclass(frozen=True)
class LockEntry:
    """One dep or out of a dvc.lock stage that carries an md5."""

    stage: str
    section: str
    path: str
    md5: str

    @property
    def is_dir(self) -> bool:
        return self.md5.endswith(".dir")


class DvcLock:
    """The md5 entries of a project's dvc.lock and the local DVC cache they point to."""

    def __init__(self, root: Path, files: dict[str, Any]):
        """``files``: {lock path relative to ``root``: its parsed content}."""
        self.root = root
        self.stages: dict[str, list[LockEntry]] = {}
        self.by_path: dict[str, list[LockEntry]] = {}
        for rel, data in sorted(files.items()):
            if not isinstance(data, dict) or not isinstance(data.get("stages"), dict):
                raise DataError(f"{root / rel}: expected a mapping with 'stages' (DVC 3 lock file)")
            prefix = "" if rel == DVC_LOCK else rel.removesuffix(".lock") + ".yaml:"  # DVC's name for the stage
            for name, body in sorted(data["stages"].items()):
                stage = prefix + name
                body = body if isinstance(body, dict) else {}
                entries = []
                for section in ("deps", "outs"):
                    for item in body.get(section) or []:
                        if isinstance(item, dict) and item.get("hash") == "md5" and "md5" in item and "path" in item:
                            entries.append(LockEntry(stage, section, posixpath.normpath(str(item["path"])), str(item["md5"])))
                self.stages[stage] = entries
                for e in entries:
                    self.by_path.setdefault(e.path, []).append(e)
        self.cache = cache_root(root)

    @classmethod
    def load(cls, root: Path) -> DvcLock | None:
        """The project's lock files (root dvc.lock and pipelines/**/dvc.lock), or None when there is none.

        Their paths are relative to the project root: every generated stage runs there (``wdir``).
        """
        import yaml

        paths = [p for p in [root / DVC_LOCK, *sorted((root / "pipelines").rglob(DVC_LOCK))] if p.is_file()]
        if not paths:
            return None
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        files = {}
        for path in paths:
            try:
                data = yaml.load(path.read_text(), Loader=loader)
                defined = path.with_name("dvc.yaml")
                stages = (yaml.load(defined.read_text(), Loader=loader) or {}).get("stages") if defined.is_file() else None
            except yaml.YAMLError as exc:
                raise DataError(f"{path}: not valid YAML: {exc}") from None
            if isinstance(data, dict) and isinstance(data.get("stages"), dict) and isinstance(stages, dict):
                # DVC keeps the entries of stages no longer in dvc.yaml (e.g. after the DAG changed shape)
                # but ignores them; so does the audit
                data = {**data, "stages": {k: v for k, v in data["stages"].items() if k in stages}}
            files[path.relative_to(root).as_posix()] = data
        return cls(root, files)

    def object(self, oid: str) -> Path:
        """Where the local cache keeps object ``oid``."""
        return self.cache / oid[:2] / oid[2:]

    def cached_manifest(self, oid: str) -> dict[str, str] | None:
        """{relpath: md5} of a cached ``.dir`` object whose content matches ``oid``, else None."""
        obj = self.object(oid)
        if not obj.is_file() or hash_file(obj)["md5"] != oid.removesuffix(".dir"):
            return None
        try:
            return {e["relpath"]: e["md5"] for e in json.loads(obj.read_text()) if "md5" in e}
        except (ValueError, TypeError, KeyError):
            return None

    def owners(self, paths: list[str]) -> list[str]:
        """Stages whose outs contain any of ``paths`` (the path itself or an ancestor directory)."""
        found: set[str] = set()
        for p in paths:
            for q in [p, *_parents(p)]:
                found.update(e.stage for e in self.by_path.get(q, []) if e.section == "outs")
        return sorted(found)


@dataclass
class Node:
    """The verification result of one sidecar."""

    sidecar: str
    name: str = "?"
    params_hash: str = "-"
    code: str = "-"
    issues: list[tuple[str, str]] = field(default_factory=list)
    unmaterialised: dict[str, bool] = field(default_factory=dict)
    children: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        """Stage name and the artefact it made (``X`` for a sidecar ``X.prov.json``)."""
        return f"{self.name} ({self.sidecar.removesuffix(SIDECAR_SUFFIX)})"

    @property
    def status(self) -> str:
        levels = {level for level, _ in self.issues}
        return BROKEN if BROKEN in levels else WARN if WARN in levels else OK

    def broken(self, msg: str) -> None:
        self.issues.append((BROKEN, msg))

    def warn(self, msg: str) -> None:
        self.issues.append((WARN, msg))


class Auditor:
    """Verifies sidecars under ``root``, memoising file hashes, records and results."""

    def __init__(self, root: Path, params_file: str):
        self.root = root
        self.params_file = params_file
        self.lock: DvcLock | None = None
        self.lock_error = ""
        try:
            self.lock = DvcLock.load(root)
        except DataError as exc:
            self.lock_error = str(exc)
        self.nodes: dict[str, Node] = {}
        self._hashes: dict[str, dict[str, Any] | None] = {}
        self._records: dict[str, dict[str, Any] | str] = {}
        self._candidates: dict[str, list[str]] = {}
        self._commits: dict[str, bool | None] = {}
        self._params: dict[str, Any] | str | None = None
        self._unrecorded: dict[str, dict[str, str]] = {}
        self._lock_manifests: dict[tuple[str, str], dict[str, str] | None] = {}

    @property
    def dvcignore(self) -> list[str]:
        """File-name patterns of .dvcignore without a slash (the form cmml uses); DVC skips them in directories."""
        path = self.root / ".dvcignore"
        lines = path.read_text().splitlines() if path.is_file() else []
        return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#") and "/" not in ln]

    @property
    def files_hashed(self) -> int:
        """How many distinct files were hashed."""
        return sum(h is not None for h in self._hashes.values())

    def hash(self, path: str) -> dict[str, Any] | None:
        """Hash record of a root-relative file (None when it is not a file); computed once."""
        if path not in self._hashes:
            full = self.root / path
            self._hashes[path] = hash_file(full) if full.is_file() else None
        return self._hashes[path]

    def record(self, sidecar: str) -> dict[str, Any] | str:
        """The parsed sidecar, or a string saying why it cannot be read."""
        if sidecar not in self._records:
            try:
                rec = json.loads((self.root / sidecar).read_text())
                ok = isinstance(rec, dict) and all(isinstance(rec.get(k), dict) for k in ("outputs", "inputs"))
                self._records[sidecar] = rec if ok else "expected a JSON object with 'outputs' and 'inputs' mappings"
            except (OSError, ValueError) as exc:
                self._records[sidecar] = str(exc)
        return self._records[sidecar]

    def candidates(self, d: str) -> list[str]:
        """Sidecars of directory ``d``: prov.json first, then *.prov.json by name."""
        if d not in self._candidates:
            full = self.root / d
            names = [DIR_SIDECAR] if (full / DIR_SIDECAR).is_file() else []
            if full.is_dir():
                names += sorted(p.name for p in full.glob("*" + SIDECAR_SUFFIX) if p.is_file())
            self._candidates[d] = [posixpath.join(d, n) for n in names]
        return self._candidates[d]

    def locate(self, path: str, as_dir: bool = False) -> str | None:
        """The sidecar whose outputs hold ``path`` (a file, or any file under a directory)."""
        unreadable = None
        prefix = path + "/"
        for d in ([path] if as_dir else []) + _parents(path):
            for cand in self.candidates(d):
                rec = self.record(cand)
                if isinstance(rec, str):
                    unreadable = unreadable or cand
                elif path in rec["outputs"] or (as_dir and any(o.startswith(prefix) for o in rec["outputs"])):
                    return cand
        return unreadable

    def params(self) -> dict[str, Any] | str:
        """The params file (YAML, not validated), or a string saying why it cannot be read."""
        if self._params is None:
            import yaml

            try:
                loaded = yaml.safe_load(Path(self.params_file).read_text())
                self._params = loaded if isinstance(loaded, dict) else "expected a mapping at the top level"
            except (OSError, yaml.YAMLError) as exc:
                self._params = str(exc)
        return self._params

    def commit_known(self, sha: str) -> bool | None:
        """Whether the repository has commit ``sha`` (None when git or a repository is absent)."""
        if sha not in self._commits:
            try:
                if subprocess.run(["git", "rev-parse", "--git-dir"], cwd=self.root, capture_output=True).returncode != 0:
                    self._commits[sha] = None
                else:
                    res = subprocess.run(["git", "cat-file", "-e", f"{sha}^{{commit}}"], cwd=self.root, capture_output=True)
                    self._commits[sha] = res.returncode == 0
            except OSError:
                self._commits[sha] = None
        return self._commits[sha]

    def unrecorded(self, d: str) -> dict[str, str]:
        """{relpath: md5} of the files under directory ``d`` that sidecars never record
        (sidecars, dot-files), hashed from disk; scanned once per directory."""
        if d not in self._unrecorded:
            recordable = {p.as_posix() for p in expand([Path(d)], self.root)}
            files = (f.relative_to(self.root).as_posix() for f in (self.root / d).rglob("*")
                     if f.is_file() and not any(fnmatch.fnmatch(f.name, pat) for pat in self.dvcignore))
            self._unrecorded[d] = {rel[len(d) + 1:]: self.hash(rel)["md5"]  # type: ignore[index]
                                   for rel in sorted(files) if rel not in recordable}
        return self._unrecorded[d]

    def manifest(self, d: str, records: dict[str, dict[str, Any]]) -> dict[str, str] | None:
        """{relpath: md5} of directory ``d`` as DVC sees it: the files in ``records`` plus
        :meth:`unrecorded`. None when ``d`` is not a directory in the workspace (its missing
        files are reported apart)."""
        if not (self.root / d).is_dir():
            return None
        prefix = d + "/"
        manifest = {k[len(prefix):]: str(r.get("md5")) for k, r in records.items() if k.startswith(prefix)}
        return manifest | self.unrecorded(d)

    def dir_md5(self, d: str, records: dict[str, dict[str, Any]]) -> str | None:
        """DVC's hash of directory ``d`` rebuilt from ``records`` (see :meth:`manifest`)."""
        manifest = self.manifest(d, records)
        return None if manifest is None else dvc_dir_md5(manifest)

    def vouch(self, path: str, md5_: str) -> tuple[str, bool] | None:
        """(dvc.lock path, in local cache) when dvc.lock records ``path`` with this md5."""
        if self.lock is None:
            return None
        if any(e.md5 == md5_ and not e.is_dir for e in self.lock.by_path.get(path, [])):
            return path, self.lock.object(md5_).is_file()
        for d in _parents(path):
            for e in self.lock.by_path.get(d, []):
                if not e.is_dir:
                    continue
                manifest = self.lock_manifest(e, path)
                if manifest is not None and manifest.get(path[len(d) + 1:]) == md5_:
                    return d, self.lock.object(md5_).is_file()
        return None

    def lock_manifest(self, entry: LockEntry, member: str) -> dict[str, str] | None:
        """The manifest behind a dvc.lock directory entry: its ``.dir`` object in the local
        cache, else the one rebuilt from the sidecar that produced ``member`` when it hashes to
        the entry's md5; None when neither can be had. Computed once per entry."""
        assert self.lock is not None
        key = (entry.path, entry.md5)
        if key not in self._lock_manifests:
            manifest = self.lock.cached_manifest(entry.md5)
            if manifest is None:
                producer = self.locate(member)
                rec = self.record(producer) if producer else None
                rebuilt = self.manifest(entry.path, rec["outputs"]) if isinstance(rec, dict) else None
                manifest = rebuilt if rebuilt is not None and dvc_dir_md5(rebuilt) == entry.md5 else None
            self._lock_manifests[key] = manifest
        return self._lock_manifests[key]

    def verify(self, sidecar: str) -> Node:
        """Verify one sidecar and (recursively) the sidecars of its inputs; each once."""
        if sidecar in self.nodes:
            return self.nodes[sidecar]
        node = self.nodes[sidecar] = Node(sidecar)
        rec = self.record(sidecar)
        if isinstance(rec, str):
            node.broken(f"{sidecar}: unreadable provenance record ({rec})")
            return node
        code = rec.get("code") or {}
        node.name = str(rec.get("name", "?"))
        node.params_hash = str(rec.get("params_hash") or "-")
        node.code = (str(code["commit"])[:7] if code.get("commit") else "-") + ("+dirty" if code.get("dirty") else "")
        self._check_outputs(node, rec)
        children = self._check_inputs(node, rec)
        self._check_params(node, rec)
        self._check_code(node, code)
        if self.lock is not None:
            self._check_lock(node, rec, code)
        node.children = [c for c in children if c != sidecar]
        for child in node.children:
            self.verify(child)
        return node

    def _missing(self, node: Node, path: str, r: dict[str, Any], what: str) -> bool:
        """Report a recorded file absent from the workspace; True when dvc.lock vouches for it."""
        vouched = self.vouch(path, str(r.get("md5")))
        if vouched:
            node.unmaterialised[vouched[0]] = node.unmaterialised.get(vouched[0], True) and vouched[1]
            return True
        node.broken(f"{path}: {what} of {node.label} is missing and no dvc.lock record vouches for it "
                    f"(expected sha256 {str(r.get('sha256'))[:12]}, found no file)")
        return False

    def _check_outputs(self, node: Node, rec: dict[str, Any]) -> None:
        for path, r in sorted(rec["outputs"].items()):
            cur = self.hash(path)
            if cur is None:
                self._missing(node, path, r, "output")
            elif cur["sha256"] != r.get("sha256"):
                node.broken(f"{path}: output of {node.label} changed since it was recorded "
                            f"(expected sha256 {str(r.get('sha256'))[:12]}, found {cur['sha256'][:12]})")

    def _check_inputs(self, node: Node, rec: dict[str, Any]) -> list[str]:
        children: dict[str, None] = {}
        for path, r in sorted(rec["inputs"].items()):
            cur = self.hash(path)
            if cur is None:
                if self._missing(node, path, r, "input"):
                    continue  # not materialised: the walk stops here
            elif cur["sha256"] != r.get("sha256") and not self.same_code(path, rec):
                node.broken(f"{path}: input of {node.label} changed since it was used "
                            f"(expected sha256 {str(r.get('sha256'))[:12]}, found {cur['sha256'][:12]})")
            producer = self.locate(path)
            if producer is not None:
                children[producer] = None
            elif cur is not None and not is_source(path):
                node.broken(f"no provenance record for {path} (input of {node.label})")
        return list(children)

    def _check_params(self, node: Node, rec: dict[str, Any]) -> None:
        recorded = rec.get("params") or {}
        if rec.get("params_hash") is not None and params_hash(recorded) != rec["params_hash"]:
            node.broken(f"{node.sidecar}: params_hash {rec['params_hash']} does not match its recorded params "
                        f"({params_hash(recorded)})")
        if not recorded:
            return
        current = self.params()
        if isinstance(current, str):
            node.broken(f"cannot check the params of {node.label}: {self.params_file}: {current}")
            return
        for key, value in sorted(recorded.items()):
            try:
                now = get(current, key, self.params_file)
            except ConfigError:
                node.broken(f"params changed since {node.label} was made: key {key} recorded {_canon(value)} "
                            f"now missing from {self.params_file}")
                continue
            for k, was, is_ in _param_diff(key, value, now):
                node.broken(f"params changed since {node.label} was made: key {k} recorded {was} now {is_}")

    def same_code(self, path: str, rec: dict[str, Any]) -> bool:
        """Whether source ``path`` differs from the recorded one only in docstrings and comments."""
        recorded = ((rec.get("code") or {}).get("fingerprints") or {}).get(path)
        if recorded is None or not path.endswith(".py") or not (self.root / path).is_file():
            return False
        try:
            return file_fingerprint(self.root / path) == recorded
        except (SyntaxError, ValueError, OSError):
            return False

    def _check_code(self, node: Node, code: dict[str, Any]) -> None:
        rec = {"code": code}
        for src, sha in sorted((code.get("sources") or {}).items()):
            cur = self.hash(src)
            found = cur["sha256"][:12] if cur else "no file"
            if cur is None or (cur["sha256"] != sha and not self.same_code(src, rec)):
                node.broken(f"code changed: {src} (expected sha256 {str(sha)[:12]} as recorded for {node.label}, found {found})")
        commit = code.get("commit")
        if commit:
            known = self.commit_known(str(commit)) if _SHA.fullmatch(str(commit)) else False
            if known is False:
                node.broken(f"code commit {commit} recorded for {node.label} is not in this git repository")
        if code.get("dirty"):
            node.warn(f"{node.label} was made from a working tree with uncommitted changes (commit {node.code})")

    def _check_lock(self, node: Node, rec: dict[str, Any], code: dict[str, Any]) -> None:
        assert self.lock is not None
        outputs, inputs = rec["outputs"], rec["inputs"]
        sources = code.get("sources") or {}
        for stage in self.lock.owners([node.sidecar, *outputs]):
            for e in self.lock.stages[stage]:
                ours: str | None = None
                if e.section == "outs":
                    if e.is_dir:
                        ours = self.dir_md5(e.path, outputs)
                    elif e.path in outputs:
                        ours = outputs[e.path].get("md5")
                    elif e.path == node.sidecar:
                        ours = self.hash(e.path)["md5"]  # type: ignore[index]
                elif e.is_dir:
                    if any(k.startswith(e.path + "/") for k in inputs):
                        ours = self.dir_md5(e.path, inputs)
                elif e.path in inputs:
                    ours = inputs[e.path].get("md5")
                elif e.path in sources and (cur := self.hash(e.path)) and cur["sha256"] == sources[e.path]:
                    ours = cur["md5"]
                if ours is not None and ours != e.md5:
                    node.broken(f"{e.path}: dvc.lock stage '{stage}' ({e.section}) records md5 {e.md5}, "
                                f"but {node.sidecar} gives {ours}")


def _render(aud: Auditor, key: str, depth: int, seen: set[str], lines: list[str], broken: list[str]) -> None:
    node = aud.nodes[key]
    ind = "  " * depth
    if key in seen:
        lines.append(f"{ind}{node.name}  {key}  (verified above: {node.status})")
        return
    seen.add(key)
    lines.append(f"{ind}{node.name}  {key}  {node.status}  params {node.params_hash}  code {node.code}")
    for level, msg in node.issues:
        lines.append(f"{ind}  {level}: {msg}")
        if level == BROKEN:
            broken.append(msg)
    for path, in_cache in sorted(node.unmaterialised.items()):
        how = ("in DVC cache; `dvc checkout` restores it" if in_cache
               else "in dvc.lock, not in the local DVC cache; `dvc pull` restores it")
        lines.append(f"{ind}  {path}  not materialised ({how})")
    for child in node.children:
        _render(aud, child, depth + 1, seen, lines, broken)


def audit(paths: list[str], params_file: str = "params.yaml", root: Path | None = None) -> tuple[list[str], list[str]]:
    """Verify the chains behind ``paths``; return (tree lines, broken-link messages in tree order)."""
    root = root or Path.cwd()
    aud = Auditor(root, params_file)
    lines: list[str] = []
    broken: list[str] = []
    seen: set[str] = set()
    if aud.lock_error:
        lines += [f"{DVC_LOCK}  BROKEN", f"  BROKEN: {aud.lock_error}"]
        broken.append(aud.lock_error)
    for arg in paths:
        rel = Path(os.path.relpath(os.path.abspath(arg), root)).as_posix()
        full = root / rel
        if rel == ".." or rel.startswith("../"):
            sidecar, msg = None, f"{arg} is outside the project root {root}"
        else:
            sidecar = rel if full.is_file() and is_sidecar(full) else aud.locate(rel, as_dir=full.is_dir())
            msg = f"no provenance record for {rel}"
        if sidecar is None:
            lines += [f"{rel}  BROKEN", f"  BROKEN: {msg}"]
            broken.append(msg)
            continue
        aud.verify(sidecar)
        _render(aud, sidecar, 0, seen, lines, broken)
    ok = not broken
    lines.append(f"audit {'OK' if ok else 'BROKEN'}: {len(aud.nodes)} provenance records, "
                 f"{aud.files_hashed} files hashed")
    return lines, broken


def main(paths: list[str], params_file: str = "params.yaml", quiet: bool = False) -> int:
    """`cmml audit`: print the tree (unless quiet); 0 when every link holds, else 1."""
    lines, broken = audit(paths, params_file)
    if not quiet:
        try:
            print("\n".join(lines), flush=True)
        except BrokenPipeError:  # `cmml audit ... | head`: the reader left; the verdict is the exit code
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if broken:
        print(f"BROKEN: {broken[0]}", file=sys.stderr)
        return 1
    return 0
