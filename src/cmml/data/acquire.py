"""Getting raw data onto disk: resumable download with progress, sha256 recorded then verified, safe extraction.

- :func:`download` fetches ``url`` into ``dest`` through ``<dest>.part``, resuming a partial file
  with an HTTP Range request and printing progress to stderr. The archive's sha256 is written to
  ``<dest>.sha256`` the first time and compared on every later call; a file whose digest differs
  is moved aside to ``<dest>.bad-<digest prefix>`` (nothing else is touched) and the call fails
  naming both digests.
- :func:`extract` unpacks a tar archive (gz/bz2/xz) into a temporary folder beside the target and
  renames it into place; a truncated or corrupt archive is moved aside the same way and the
  target stays as it was. Members that would land outside the target are refused.
- :func:`ensure_archive` is what a benchmark calls: an existing extracted folder is kept, an
  existing archive is verified and extracted, otherwise it is downloaded first.

Nothing here runs in the default pipeline or the tests' network-free paths: the tests pass
``file://`` URLs.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path

from cmml.errors import DataError

CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    """sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def set_aside(path: Path, digest: str) -> Path:
    """Move a bad file to ``<path>.bad-<digest[:12]>`` and return the new path."""
    bad = path.with_name(f"{path.name}.bad-{digest[:12]}")
    os.replace(path, bad)
    return bad


def verify(path: Path) -> str:
    """Check ``path`` against ``<path>.sha256`` (recording it when absent); the digest. A mismatch moves it aside."""
    record = path.with_name(path.name + ".sha256")
    digest = sha256_of(path)
    if not record.is_file():
        record.write_text(digest + "\n", encoding="utf-8")
        return digest
    want = record.read_text(encoding="utf-8").split()[0]
    if digest != want:
        bad = set_aside(path, digest)
        raise DataError(f"{path}: sha256 {digest} differs from {want} recorded in {record}; the file was moved to "
                        f"{bad} (delete {record} only if the source legitimately changed)")
    return digest


def _progress(done: int, total: int | None, name: str) -> None:
    if total:
        width = 30
        filled = width * done // total
        sys.stderr.write(f"\r{name}: [{'#' * filled}{'.' * (width - filled)}] {done / total:6.1%} of {total / 2**20:.1f} MiB")
    else:
        sys.stderr.write(f"\r{name}: {done / 2**20:.1f} MiB")
    sys.stderr.flush()


def download(url: str, dest: Path, *, timeout: float = 60.0, progress: bool = True) -> str:
    """Fetch ``url`` to ``dest`` (resuming ``<dest>.part``), then :func:`verify` it; the sha256."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resumed = have and getattr(resp, "status", 200) == 206
            size = resp.headers.get("Content-Length")
            total = int(size) + (have if resumed else 0) if size else None
            done = have if resumed else 0
            with open(part, "ab" if resumed else "wb") as fh:
                while chunk := resp.read(CHUNK):
                    fh.write(chunk)
                    done += len(chunk)
                    if progress:
                        _progress(done, total, dest.name)
    except (urllib.error.URLError, OSError) as exc:
        raise DataError(f"{dest}: download from {url} failed ({exc}); rerun to resume from the "
                        f"{part.stat().st_size if part.exists() else 0} bytes kept in {part}") from None
    if progress:
        sys.stderr.write("\n")
    if total is not None and done != total:
        raise DataError(f"{dest}: download from {url} stopped at {done} of {total} bytes; rerun to resume ({part})")
    os.replace(part, dest)
    return verify(dest)


def extract(archive: Path, target: Path) -> None:
    """Unpack the tar ``archive`` so that its single top folder (or its members) become ``target``."""
    target = Path(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        bad = set_aside(archive, sha256_of(archive))
        raise DataError(f"{archive}: cannot be extracted ({type(exc).__name__}: {exc}); truncated or corrupt, moved to "
                        f"{bad}; {target} was not touched") from None
    entries = list(tmp.iterdir())
    src = entries[0] if len(entries) == 1 and entries[0].is_dir() else tmp
    os.replace(src, target)
    shutil.rmtree(tmp, ignore_errors=True)


def ensure_archive(target: Path, archive: Path, urls: list[str]) -> None:
    """``target`` present: nothing to do. Else verify or download ``archive`` (first URL that works), extract it."""
    target, archive = Path(target), Path(archive)
    if target.is_dir():
        return
    if archive.is_file():
        verify(archive)
    else:
        errors = []
        for url in urls:
            try:
                download(url, archive)
                break
            except DataError as exc:
                errors.append(str(exc))
        else:
            raise DataError(f"{target}: not present and no source worked: " + " | ".join(errors))
    extract(archive, target)
