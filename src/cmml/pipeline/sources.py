"""A stage's code identity, derived from the code: the import closure of its entry modules.

The closure is computed statically from the ``import`` statements of the modules under
``src/cmml`` (module level and inside functions, not ``if TYPE_CHECKING:`` blocks), starting
from a stage's entry modules (its handler, plus e.g. the method module it builds). Importing a
module also runs its packages' ``__init__.py``, so those are part of the closure.

A *fingerprint* of a module is the sha256 of its AST with docstrings removed: editing a
docstring or a comment leaves it unchanged, any other change alters it. The ``code`` stage
writes one fingerprint file per distinct entry tuple (``runs/code/<key>.json``); every stage
depends on its fingerprint file instead of on ~20 source files, so both tools rerun exactly the
stages whose code changed. Sidecars still record the raw sha256 of every file in the closure.

Parsing every module costs ~0.6 s, paid by each Snakemake parse; the imports and fingerprint of a
module are therefore cached in ``.cmml/sources.json`` keyed by the sha256 of the file's bytes, so a
changed file is always re-analysed.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

PACKAGE = "cmml"
SRC = Path("src")
CACHE_FILE = Path(".cmml/sources.json")  # per project: module -> sha256 of its bytes, imports, fingerprint
PKG_DIR = Path(__file__).resolve().parents[1]  # .../src/cmml


@lru_cache(maxsize=None)
def module_file(module: str) -> Path | None:
    """Source file of a ``cmml`` module (package ``__init__.py`` or module file), None if absent."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PKG_DIR.joinpath(*parts[1:])
    for cand in (base / "__init__.py", base.with_suffix(".py")):
        if cand.is_file():
            return cand
    return None


@lru_cache(maxsize=None)
def rel_path(module: str) -> str:
    """Repository-relative posix path of a module's file (``src/cmml/...``)."""
    f = module_file(module)
    if f is None:
        raise KeyError(f"no source file for module {module!r}")
    return (SRC / f.relative_to(PKG_DIR.parent)).as_posix()


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, module: str, is_pkg: bool) -> set[str]:
    """cmml modules named by the import statements of ``tree`` (TYPE_CHECKING blocks skipped)."""
    found: set[str] = set()
    here = module.split(".") if is_pkg else module.split(".")[:-1]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here[: len(here) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in found if m.split(".")[0] == PACKAGE and module_file(m) is not None}


@lru_cache(maxsize=None)
def _disk_cache() -> dict[str, dict[str, object]]:
    """The analysis cache of this project (``.cmml/sources.json``), read once per process."""
    try:
        data = json.loads(CACHE_FILE.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


_updated: set[str] = set()


@lru_cache(maxsize=None)
def _analysis(module: str) -> tuple[frozenset[str], str]:
    """(imports, fingerprint) of ``module``; reused from the cache while the file's bytes (sha256) are unchanged."""
    f = module_file(module)
    if f is None:
        raise KeyError(f"no source file for module {module!r}")
    raw = f.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    hit = _disk_cache().get(module)
    if isinstance(hit, dict) and hit.get("sha256") == digest:
        return frozenset(m for m in hit["imports"] if module_file(m) is not None), str(hit["fingerprint"])  # type: ignore[union-attr]
    tree = ast.parse(raw.decode("utf-8"), filename=str(f))
    imports = frozenset(_imports(tree, module, f.name == "__init__.py"))
    fp = hashlib.sha256(ast.dump(strip_docstrings(tree), include_attributes=False).encode()).hexdigest()
    _disk_cache()[module] = {"sha256": digest, "imports": sorted(imports), "fingerprint": fp}
    _updated.add(module)
    return imports, fp


def save_cache() -> None:
    """Write the analysis cache if this process analysed a new or changed module (atomic; last writer wins)."""
    if not _updated:
        return
    with contextlib.suppress(OSError):
        CACHE_FILE.parent.mkdir(parents=True, exist_ok=True)
        tmp = CACHE_FILE.with_name(f".{CACHE_FILE.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(_disk_cache(), sort_keys=True))
        os.replace(tmp, CACHE_FILE)
        _updated.clear()


def direct_imports(module: str) -> frozenset[str]:
    """The cmml modules ``module`` imports (plus the packages that contain them)."""
    deps = set(_analysis(module)[0])
    for m in list(deps):
        parts = m.split(".")
        deps.update(".".join(parts[:i]) for i in range(1, len(parts)))
    deps.discard(module)
    return frozenset(deps)


def closure(entries: tuple[str, ...] | list[str]) -> list[str]:
    """Every cmml module the entry modules can import, entries and their packages included, sorted."""
    seen: set[str] = set()
    todo = list(entries)
    for e in entries:
        parts = e.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo.extend(direct_imports(m) - seen)
    return sorted(seen)


def all_modules() -> list[str]:
    """Every module of the package."""
    out = []
    for f in sorted(PKG_DIR.rglob("*.py")):
        rel = f.relative_to(PKG_DIR.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.append(".".join(parts))
    return out


class _StripDocstrings(ast.NodeTransformer):
    def _strip(self, node: ast.AST) -> ast.AST:
        self.generic_visit(node)
        body = getattr(node, "body", None)
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]  # type: ignore[attr-defined]
        return node

    visit_Module = visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _strip  # noqa: N815


def strip_docstrings(tree: ast.AST) -> ast.AST:
    """``tree`` without module, class and function docstrings (modified in place)."""
    return _StripDocstrings().visit(tree)


def fingerprint(module: str) -> str:
    """sha256 of the module's AST without docstrings (comments and layout never count)."""
    return _analysis(module)[1]


def clear_caches() -> None:
    """Forget module files and analyses (after source files changed in this process); the disk cache is re-read."""
    module_file.cache_clear()
    rel_path.cache_clear()
    _analysis.cache_clear()
    _disk_cache.cache_clear()
    _updated.clear()


def code_key(entries: tuple[str, ...]) -> str:
    """File-name key of an entry tuple: the entries' last components joined by '+'."""
    return "+".join(e.removeprefix(f"{PACKAGE}.").replace(".", "-") for e in entries)


def fingerprint_record(entries: tuple[str, ...]) -> dict[str, object]:
    """What a fingerprint file holds: the entries and {source path: fingerprint} of their closure."""
    return {"entries": list(entries), "modules": {rel_path(m): fingerprint(m) for m in closure(entries)}}


def fingerprint_text(entries: tuple[str, ...]) -> str:
    """The fingerprint file's exact text (stable bytes for the same code)."""
    return json.dumps(fingerprint_record(entries), indent=2, sort_keys=True) + "\n"


def source_files() -> list[str]:
    """Repository-relative paths of every source file of the package (the ``code`` stage's deps)."""
    return [rel_path(m) for m in all_modules()]
