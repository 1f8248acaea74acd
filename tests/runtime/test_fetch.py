"""Downloads against a real HTTP server on 127.0.0.1: resume, restart, caps, status codes."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path

import pytest

from agent_runtime.config import DownloadSettings
from agent_runtime.errors import ArtifactMismatchError, DownloadError, SlowRetrievalError
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


SLOW = DownloadSettings(
    stall_timeout=timedelta(seconds=2),
    retries=0,
    min_speed=1000,
    min_speed_grace=timedelta(seconds=0.3),
    manifest_timeout=timedelta(seconds=60),
)


def test_dripping_artifact_ends_as_slow_retrieval(repo: Path, tmp_path: Path) -> None:
    """A server dripping a byte at a time (each read within the stall timeout) is ended by
    the minimum average speed, and the partial file is kept for a resume."""
    dest = tmp_path / "blob"
    with serve(repo, {"blob": "drip"}) as http, pytest.raises(SlowRetrievalError) as err:
        Fetcher(SLOW).fetch(f"{http.url}/blob", dest, size=len(DATA), sha256=SHA)
    assert "below the minimum average of 1000 bytes/s" in str(err.value)
    assert not dest.exists()


def test_dripping_manifest_ends_as_slow_retrieval(repo: Path) -> None:
    """A manifest dripped a byte at a time is refused by the minimum average speed too."""
    with serve(repo, {"blob": "drip"}) as http, pytest.raises(SlowRetrievalError, match="slow"):
        Fetcher(SLOW).read_small(f"{http.url}/blob", 2 * len(DATA))


def test_manifest_must_arrive_within_the_manifest_timeout(repo: Path) -> None:
    """With the speed check off, a manifest still has to arrive whole within its timeout."""
    settings = SLOW.model_copy(update={"min_speed": 0, "manifest_timeout": timedelta(seconds=0.3)})
    with serve(repo, {"blob": "drip"}) as http, pytest.raises(SlowRetrievalError) as err:
        Fetcher(settings).read_small(f"{http.url}/blob", 2 * len(DATA))
    assert "manifest_timeout" in str(err.value)


def test_fast_transfer_passes_the_speed_check(repo: Path, tmp_path: Path) -> None:
    """A normal download with the speed check on completes (the check refuses only slow ones)."""
    dest = tmp_path / "blob"
    settings = SLOW.model_copy(update={"min_speed_grace": timedelta(0)})
    with serve(repo) as http:
        Fetcher(settings).fetch(f"{http.url}/blob", dest, size=len(DATA), sha256=SHA)
    assert dest.read_bytes() == DATA
