"""Downloads against a real HTTP server on 127.0.0.1: resume, restart, caps, status codes."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path

import pytest

from agent_runtime.config import DownloadSettings
from agent_runtime.errors import ArtifactMismatchError, DownloadError
from agent_runtime.fetch import Fetcher
from tests.harness.http import serve

DATA = bytes(range(256)) * 4096  # 1 MiB
SHA = hashlib.sha256(DATA).hexdigest()
SETTINGS = DownloadSettings(stall_timeout=timedelta(seconds=1), retries=0)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A served directory holding one 1 MiB file."""
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "blob").write_bytes(DATA)
    return tmp_path / "srv"


def test_resumes_a_partial_file_with_range(repo: Path, tmp_path: Path) -> None:
    """A partial file is continued with Range: bytes=N- and the result verifies."""
    dest = tmp_path / "out" / "blob"
    dest.parent.mkdir()
    (dest.parent / "blob.part").write_bytes(DATA[:1000])
    with serve(repo) as http:
        Fetcher(SETTINGS).fetch(f"{http.url}/blob", dest, size=len(DATA), sha256=SHA)
        assert http.requests == [("/blob", "bytes=1000-")]
    assert dest.read_bytes() == DATA and not (dest.parent / "blob.part").exists()


def test_server_ignoring_range_restarts_from_zero(repo: Path, tmp_path: Path) -> None:
    """A 200 answer to a Range request rewrites the file from byte 0."""
    dest = tmp_path / "blob"
    (tmp_path / "blob.part").write_bytes(b"garbage!" * 10)
    with serve(repo, {"blob": "ignore_range"}) as http:
        Fetcher(SETTINGS).fetch(f"{http.url}/blob", dest, size=len(DATA), sha256=SHA)
    assert dest.read_bytes() == DATA


def test_stall_keeps_partial_for_resume(repo: Path, tmp_path: Path) -> None:
    """A stalled transfer raises DownloadError and keeps the partial file for the next try."""
    dest = tmp_path / "blob"
    with serve(repo, {"blob": "stall"}) as http, pytest.raises(DownloadError, match="stall"):
        Fetcher(SETTINGS).fetch(f"{http.url}/blob", dest, size=len(DATA), sha256=SHA)
    part = tmp_path / "blob.part"
    kept = part.stat().st_size
    assert 0 < kept < len(DATA) and not dest.exists()
    with serve(repo) as http:
        Fetcher(SETTINGS).fetch(f"{http.url}/blob", dest, size=len(DATA), sha256=SHA)
        assert http.requests == [("/blob", f"bytes={kept}-")]
    assert dest.read_bytes() == DATA


def test_http_status_is_carried(repo: Path, tmp_path: Path) -> None:
    """A 404 raises DownloadError with status 404."""
    with serve(repo) as http, pytest.raises(DownloadError) as e:
        Fetcher(SETTINGS).fetch(f"{http.url}/missing", tmp_path / "x", size=1, sha256=SHA)
    assert e.value.status == 404


def test_longer_than_declared_is_cut_and_removed(repo: Path, tmp_path: Path) -> None:
    """More bytes than declared: ArtifactMismatchError, no partial file left."""
    with serve(repo, {"blob": "extra"}) as http, pytest.raises(ArtifactMismatchError):
        Fetcher(SETTINGS).fetch(f"{http.url}/blob", tmp_path / "b", size=len(DATA), sha256=SHA)
    assert list(tmp_path.glob("b*")) == []


def test_local_path_and_wrong_hash(repo: Path, tmp_path: Path) -> None:
    """Local copies are verified the same way; a wrong hash removes the partial file."""
    dest = tmp_path / "local"
    Fetcher(SETTINGS).fetch(str(repo / "blob"), dest, size=len(DATA), sha256=SHA)
    assert dest.read_bytes() == DATA
    with pytest.raises(ArtifactMismatchError, match="sha256"):
        Fetcher(SETTINGS).fetch(
            str(repo / "blob"), tmp_path / "l2", size=len(DATA), sha256="0" * 64
        )
    assert list(tmp_path.glob("l2*")) == []
