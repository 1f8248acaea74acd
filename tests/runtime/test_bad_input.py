"""Hostile or broken input leaves the running agent untouched and the staging area clean."""

from __future__ import annotations

import resource
import signal
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from engine.signing import generate_key, sign
from tests.harness.http import serve
from tests.harness.sandbox import Sandbox
from tests.runtime.conftest import MakeSandbox


@dataclass
class Running:
    """A device on 3.0.0 with 3.0.1 published, and what it looked like before the test."""

    sb: Sandbox
    pid: int
    files: dict[str, str]

    def assert_untouched(self) -> None:
        """Same agent process, same files, still heartbeating 3.0.0, staging empty."""
        assert self.sb.agent_pid() == self.pid
        assert self.sb.snapshot() == self.files
        self.sb.wait_heartbeat("3.0.0")
        assert self.sb.staging_entries() == []
        assert self.sb.state_json()["installed"] == "3.0.0"
        journal = self.sb.journal_json()
        assert journal is None or journal["phase"] in ("DONE", "FAILED")


@pytest.fixture(params=["in_place", "versioned"])
def running(request: pytest.FixtureRequest, make_sandbox: MakeSandbox) -> Iterator[Running]:
    """3.0.0 installed and running; 3.0.1 published."""
    sb = make_sandbox(layout=request.param)
    sb.publish("3.0.0")
    sb.write_plan("3.0.0")
    run = sb.converge()
    assert run.returncode == 0, run.stdout + run.stderr
    pid = sb.agent_pid()
    assert pid is not None
    yield Running(sb, pid, sb.snapshot())


def _expect(run: Any, result: str, words: str) -> None:
    assert run.returncode == 1, run.stdout + run.stderr
    assert f"result: {result}" in run.stdout, run.stdout
    assert words in run.stdout, run.stdout


def _flip_byte(sb: Sandbox) -> None:
    path = sb.artifact("3.0.1", "core/agent.py")
    data = bytearray(path.read_bytes())
    data[10] ^= 0x01
    path.write_bytes(bytes(data))


def test_flipped_byte_in_local_artifact(running: Running) -> None:
    """One flipped byte: sha256 mismatch, download cleaned up, agent untouched."""
    running.sb.publish("3.0.1")
    _flip_byte(running.sb)
    running.sb.write_plan("3.0.1", "3.0.0")
    _expect(running.sb.converge(), "failed", "does not match the manifest")
    running.assert_untouched()


def test_longer_local_artifact(running: Running) -> None:
    """A local artifact longer than declared is refused at the declared size."""
    running.sb.publish("3.0.1")
    path = running.sb.artifact("3.0.1", "core/agent.py")
    path.write_bytes(path.read_bytes() + b"# more\n")
    running.sb.write_plan("3.0.1", "3.0.0")
    _expect(running.sb.converge(), "failed", "more data than the")
    running.assert_untouched()


@pytest.mark.parametrize(
    ("fault", "words"),
    [
        ("flip", "does not match the manifest"),
        ("truncate", "DownloadError"),
        ("extra", "the manifest declares"),
        ("stall", "stall"),
    ],
)
def test_bad_http_transfers(running: Running, fault: str, words: str) -> None:
    """Over HTTP: flipped byte, truncated body, longer body, stalled server all fail cleanly."""
    sb = running.sb
    sb.publish("3.0.1")
    faults = {}
    if fault == "flip":
        _flip_byte(sb)
    else:
        faults["core/agent.py"] = fault
    with serve(sb.repo, faults) as http:
        sb.write_plan("3.0.1", "3.0.0", base_url=http.url)
        _expect(sb.converge(), "failed", words)
    running.assert_untouched()


def _resign_other_bytes(sb: Sandbox) -> None:
    sig = sb.repo / "releases/3.0.1.yaml.sig"
    sig.write_bytes(sign(b"something else", [sb.key]))


def _remove_sig(sb: Sandbox) -> None:
    (sb.repo / "releases/3.0.1.yaml.sig").unlink()


def _unknown_key(sb: Sandbox) -> None:
    sb.publish("3.0.1", signer=generate_key())


def _expired(sb: Sandbox) -> None:
    sb.publish("3.0.1", expires=datetime.now(UTC) - timedelta(hours=1))


def _dotdot(sb: Sandbox) -> None:
    def mutate(doc: dict[str, Any]) -> None:
        doc["platforms"]["linux"]["files"][0]["path"] = "../evil.py"

    sb.publish("3.0.1", mutate=mutate)


def _absolute(sb: Sandbox) -> None:
    def mutate(doc: dict[str, Any]) -> None:
        doc["platforms"]["linux"]["files"][0]["path"] = str(sb.base / "evil.py")

    sb.publish("3.0.1", mutate=mutate)


def _not_mapping(sb: Sandbox) -> None:
    manifest = sb.repo / "releases/3.0.1.yaml"
    manifest.write_bytes(b"- just\n- a list\n")
    (sb.repo / "releases/3.0.1.yaml.sig").write_bytes(sign(manifest.read_bytes(), [sb.key]))


@pytest.mark.parametrize(
    ("spoil", "words"),
    [
        (_resign_other_bytes, "does not match the manifest bytes"),
        (_remove_sig, "no signature"),
        (_unknown_key, "unknown key"),
        (_expired, "expired"),
        (_dotdot, "must not contain '..'"),
        (_absolute, "not absolute"),
        (_not_mapping, "must be a mapping"),
    ],
    ids=["bad-signature", "missing-signature", "unknown-key", "expired", "dotdot", "absolute",
         "not-a-mapping"],
)  # fmt: skip
@pytest.mark.parametrize("running", ["in_place"], indirect=True)  # refused before any layout work
def test_untrusted_manifest_is_refused_before_download(
    running: Running, spoil: Callable[[Sandbox], None], words: str
) -> None:
    """Bad, missing or unknown-key signature, expiry, escaping paths: refused, nothing fetched."""
    sb = running.sb
    sb.publish("3.0.1")
    spoil(sb)
    with serve(sb.repo) as http:
        sb.write_plan("3.0.1", "3.0.0", base_url=http.url)
        _expect(sb.converge(), "refused", words)
        assert not [p for p, _ in http.requests if "/artifacts/" in p]
    assert not (sb.base / "evil.py").exists()
    assert sb.state_json()["attempts"] == {}  # a refusal is not an attempt
    running.assert_untouched()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_unreachable_artifact_source(running: Running) -> None:
    """Artifacts on a closed port: DownloadError, agent untouched."""
    sb = running.sb
    sb.publish("3.0.1")
    sb.write_plan("3.0.1", "3.0.0", artifacts_url=f"http://127.0.0.1:{_free_port()}/artifacts")
    _expect(sb.converge(), "failed", "cannot connect")
    running.assert_untouched()


@pytest.mark.parametrize("running", ["in_place"], indirect=True)
def test_unreachable_manifest(running: Running) -> None:
    """The manifest on a closed port: failed (transport), not counted as an attempt."""
    sb = running.sb
    sb.publish("3.0.1")
    sb.write_plan("3.0.1", "3.0.0", base_url=f"http://127.0.0.1:{_free_port()}")
    _expect(sb.converge(), "failed", "cannot fetch the manifest")
    assert sb.state_json()["attempts"] == {}
    running.assert_untouched()


def _limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes then fail with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024 * 1024, 1024 * 1024))


def test_disk_full_during_download(running: Running) -> None:
    """A file-size limit hit while downloading fails the update; agent and staging clean."""
    sb = running.sb
    sb.publish("3.0.1", pad_mb=2)
    sb.write_plan("3.0.1", "3.0.0")
    run = sb.cli("converge", "--once", "--plan", str(sb.plan_path), preexec=_limit_file_size)
    _expect(run, "failed", "File too large")
    running.assert_untouched()


def test_lower_serial_is_refused_unless_authorised(make_sandbox: MakeSandbox) -> None:
    """Going below the highest serial needs the installed release's rollback_to."""
    sb = make_sandbox(layout="in_place")
    sb.publish("3.0.0")

    def no_rollback(doc: dict[str, Any]) -> None:
        doc["rollback_to"] = []

    sb.publish("3.0.1", mutate=no_rollback)
    sb.write_plan("3.0.1")
    assert sb.converge().returncode == 0
    pid, files = sb.agent_pid(), sb.snapshot()
    sb.write_plan("3.0.0", "3.0.1")
    _expect(sb.converge(), "refused", "below the highest serial seen (2)")
    assert sb.agent_pid() == pid and sb.snapshot() == files and sb.staging_entries() == []
    sb.publish("3.0.1")  # the same release, now authorising 3.0.0
    sb.write_plan("3.0.1", "3.0.1")
    sb.converge()
    (sb.state / "manifests/3.0.1.yaml").write_bytes((sb.repo / "releases/3.0.1.yaml").read_bytes())
    (sb.state / "manifests/3.0.1.yaml.sig").write_bytes(
        (sb.repo / "releases/3.0.1.yaml.sig").read_bytes()
    )
    sb.write_plan("3.0.0", "3.0.1")
    run = sb.converge()
    assert run.returncode == 0, run.stdout
    assert sb.assert_consistent() == "3.0.0"
    assert sb.state_json()["highest_serial"] == 2
