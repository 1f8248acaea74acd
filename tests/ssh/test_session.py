"""SSH mechanics against a real sshd: host keys, auth, unreachable hosts, timeouts, commands."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.ssh import (
    Endpoint,
    HostKeyChangedError,
    HostKeyUnknownError,
    SshAuthError,
    SshSession,
    SshTimeoutError,
    SshUnreachableError,
)
from tests.harness.procs import free_port
from tests.harness.sshd import Sshd, new_key


def _endpoint(sshd: Sshd, known_hosts: Path, **kw: object) -> Endpoint:
    fields: dict[str, object] = {"host": "127.0.0.1", "port": sshd.port, "user": sshd.user}
    fields.update(key_file=sshd.client_key, known_hosts=known_hosts)
    fields.update(kw)
    return Endpoint(**fields)  # type: ignore[arg-type]


def test_known_host_runs_commands(sshd: Sshd, known_hosts: Path) -> None:
    """A host whose key is in known_hosts is reached; exit status, stdout and stderr come back."""
    with SshSession(_endpoint(sshd, known_hosts)) as s:
        res = s.run(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=10)
        assert (res.exit_status, res.stdout, res.stderr) == (3, "out\n", "err\n")
        assert s.run(["printf", "%s", "a b"], timeout=10).stdout == "a b"  # arguments quoted


def test_unknown_host_refused_unless_accept_new(sshd: Sshd, tmp_path: Path) -> None:
    """An unknown host key is refused and nothing recorded; --accept-new records it, after
    which the host is known without it."""
    kh = tmp_path / "known_hosts"
    with pytest.raises(HostKeyUnknownError, match="host key unknown"):
        SshSession(_endpoint(sshd, kh))
    assert not kh.exists()
    with SshSession(_endpoint(sshd, kh), accept_new=True):
        pass
    assert sshd.host_public_key in kh.read_text()
    assert kh.read_text().startswith(f"[127.0.0.1]:{sshd.port} ")
    with SshSession(_endpoint(sshd, kh)) as s:
        assert s.run(["true"], timeout=10).exit_status == 0


def test_changed_host_key_always_refused(sshd: Sshd, tmp_path: Path) -> None:
    """A host offering another key than the recorded one is refused, even with --accept-new,
    and the known_hosts file stays as it was."""
    other = new_key(tmp_path / "other_host_key")
    kh = sshd.known_hosts(tmp_path / "known_hosts", key=" ".join(other.split()[:2]))
    before = kh.read_bytes()
    for accept_new in (False, True):
        with pytest.raises(HostKeyChangedError, match="host key changed"):
            SshSession(_endpoint(sshd, kh), accept_new=accept_new)
    assert kh.read_bytes() == before


def test_wrong_key_is_an_auth_failure(sshd: Sshd, known_hosts: Path, tmp_path: Path) -> None:
    """A key the host does not authorise fails with one line saying authentication failed."""
    new_key(tmp_path / "stranger")
    with pytest.raises(SshAuthError, match="authentication failed") as e:
        SshSession(_endpoint(sshd, known_hosts, key_file=tmp_path / "stranger"))
    assert "\n" not in str(e.value)


def test_closed_port_is_unreachable(known_hosts: Path, sshd: Sshd) -> None:
    """Nothing listening on the port: unreachable, naming the endpoint."""
    port = free_port()
    with pytest.raises(SshUnreachableError, match=f"127.0.0.1:{port}: unreachable"):
        SshSession(_endpoint(sshd, known_hosts, port=port), timeout=3)


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP server on 127.0.0.1 that accepts and never says anything."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join()
    for c in held:
        c.close()
    srv.close()


def test_silent_host_times_out(sshd: Sshd, known_hosts: Path, silent_server: int) -> None:
    """A host that accepts but never greets ends in a timeout, not a hang."""
    with pytest.raises(SshTimeoutError, match=r"no SSH greeting|timed out"):
        SshSession(_endpoint(sshd, known_hosts, port=silent_server), timeout=0.5)


def test_slow_command_times_out(sshd: Sshd, known_hosts: Path) -> None:
    """A command running past its limit raises SshTimeoutError; the session stays usable."""
    with SshSession(_endpoint(sshd, known_hosts)) as s:
        with pytest.raises(SshTimeoutError, match=r"timed out after 0\.3s running sleep"):
            s.run(["sleep", "5"], timeout=0.3)
        assert s.run(["echo", "still here"], timeout=10).stdout == "still here\n"


def test_sftp_write_and_makedirs(sshd: Sshd, known_hosts: Path, tmp_path: Path) -> None:
    """Files land where asked with the mode asked; relative paths start at the home directory."""
    with SshSession(_endpoint(sshd, known_hosts)) as s:
        target = tmp_path / "a" / "b"
        s.makedirs(str(target))
        s.write(str(target / "f"), b"data", mode=0o640)
        assert (target / "f").read_bytes() == b"data"
        assert (target / "f").stat().st_mode & 0o777 == 0o640
        assert s.path("~/x") == s.path("x") == f"{s.home()}/x"
