"""Acquisition without the network: a local HTTP server (with Range support) stands in for the host.
Resume, sha256 recorded then verified, a mismatch or a truncated archive moved aside with nothing else
touched, and MM-IMDb's archive fetched and extracted by its prepare."""

from __future__ import annotations

import http.server
import io
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from realfixtures import bench_params, mmimdb_raw, vocab

from cmml.data.acquire import download, ensure_archive, extract, sha256_of, verify
from cmml.errors import DataError


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files with ``Range: bytes=N-`` support (206), quietly."""

    def log_message(self, *args: object) -> None:
        pass

    def send_head(self):  # noqa: ANN201 - the base class's contract
        rng = self.headers.get("Range")
        path = Path(self.translate_path(self.path))
        if not rng or not path.is_file():
            return super().send_head()
        start = int(rng.split("=")[1].split("-")[0])
        data = path.read_bytes()[start:]
        self.send_response(206)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        return io.BytesIO(data)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "host"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                            lambda *a: RangeHandler(*a, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()
    httpd.server_close()


def test_download_resumes_and_records_then_verifies(server: tuple[str, Path], tmp_path: Path) -> None:
    url, root = server
    blob = bytes(range(256)) * 4000
    (root / "a.bin").write_bytes(blob)
    dest = tmp_path / "data" / "a.bin"
    dest.parent.mkdir()
    (dest.parent / "a.bin.part").write_bytes(blob[:1000])  # an interrupted earlier download
    digest = download(f"{url}/a.bin", dest, progress=False)
    assert dest.read_bytes() == blob and digest == sha256_of(dest)
    assert (dest.parent / "a.bin.sha256").read_text().strip() == digest and not (dest.parent / "a.bin.part").exists()
    assert verify(dest) == digest  # a later run only verifies


def test_checksum_mismatch_moves_the_file_aside(tmp_path: Path) -> None:
    f = tmp_path / "archive.tar.gz"
    f.write_bytes(b"original")
    verify(f)
    other = tmp_path / "other.txt"
    other.write_text("untouched")
    f.write_bytes(b"tampered")
    with pytest.raises(DataError, match=r"archive.tar.gz: sha256 .* differs from .* recorded in .*moved to .*\.bad-"):
        verify(f)
    assert not f.exists() and len(list(tmp_path.glob("archive.tar.gz.bad-*"))) == 1
    assert other.read_text() == "untouched" and (tmp_path / "archive.tar.gz.sha256").is_file()


def make_tar(src: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(src, arcname="mmimdb")
    return dest


def test_truncated_archive_is_moved_aside_and_target_untouched(tmp_path: Path) -> None:
    archive = make_tar(mmimdb_raw(tmp_path / "src"), tmp_path / "mmimdb.tar.gz")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    (tmp_path / "data").mkdir()
    with pytest.raises(DataError, match=r"mmimdb.tar.gz: cannot be extracted .*moved to .*; .*mmimdb was not touched"):
        extract(archive, tmp_path / "data" / "mmimdb")
    assert not (tmp_path / "data" / "mmimdb").exists() and list((tmp_path / "data").iterdir()) == []
    assert not archive.exists() and list(tmp_path.glob("mmimdb.tar.gz.bad-*"))


def test_mmimdb_prepare_downloads_and_extracts_its_archive(server: tuple[str, Path], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    url, host = server
    make_tar(mmimdb_raw(tmp_path / "src"), host / "mmimdb.tar.gz")
    from cmml.data.benchmarks import mmimdb

    monkeypatch.setattr(mmimdb, "URL", f"{url}/missing.tar.gz")  # the first source fails, the second works
    monkeypatch.setattr(mmimdb, "ORIGINAL_URL", f"{url}/mmimdb.tar.gz")
    root = tmp_path / "data" / "mmimdb"
    bench = bench_params("mmimdb", root, vocab(tmp_path / "vocab.txt"), layout="raw", num_genres=23, plots="joined",
                         missing_unit="movie", num_classes=23)
    out = tmp_path / "prepared"
    out.mkdir()
    man = mmimdb.BENCHMARK.prepare(out, bench, "mmimdb")
    assert man["splits"]["train"]["count"] == 5 and (root / "split.json").is_file()
    assert (tmp_path / "data" / "mmimdb.tar.gz.sha256").is_file()
    ensure_archive(root, tmp_path / "data" / "mmimdb.tar.gz", [])  # present: nothing fetched, nothing raised
