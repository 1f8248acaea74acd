"""One client cannot stall `engine serve`: header timeout, keep-alive timeout, connection cap."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from tests.harness.procs import wait_until
from tests.server.conftest import ServerHandle, copy_fleet, running_server

HALF_REQUEST = b"POST /v1/enroll HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"


def _address(server: ServerHandle) -> tuple[str, int]:
    parts = urlsplit(server.url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


@contextlib.contextmanager
def _sockets(server: ServerHandle, count: int, first: bytes) -> Iterator[list[socket.socket]]:
    """``count`` connections to the server, each having sent ``first``."""
    opened: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.create_connection(_address(server), timeout=30)
            if first:
                s.sendall(first)
            opened.append(s)
        yield opened
    finally:
        for s in opened:
            s.close()


def _closed_by_server(s: socket.socket) -> bool:
    """Whether the server closed ``s`` (EOF or reset), waiting up to the socket timeout."""
    try:
        while True:
            data = s.recv(4096)
            if not data:
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_half_sent_requests_are_closed_after_the_header_timeout(tmp_path: Path) -> None:
    """50 connections that send half a request are closed by the server; then it serves."""
    repo = copy_fleet(tmp_path / "fleet")
    with running_server(repo, args=["--header-timeout", "1"]) as server:
        with _sockets(server, 50, HALF_REQUEST) as opened:
            assert all(_closed_by_server(s) for s in opened)
        with server.client() as c:
            assert c.get("/healthz").status_code == 200


def test_dripping_headers_do_not_extend_the_header_timeout(tmp_path: Path) -> None:
    """A client sending one header byte at a time is cut off once the timeout passes."""
    repo = copy_fleet(tmp_path / "fleet")
    with running_server(repo, args=["--header-timeout", "2"]) as server:
        s = socket.create_connection(_address(server), timeout=5)
        with s:
            s.sendall(b"GET /healthz HTTP/1.1\r\n")
            sent = 0
            closed = False
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    s.sendall(b"X")
                    sent += 1
                except OSError:
                    closed = True
                    break
                s.settimeout(0.3)
                with contextlib.suppress(TimeoutError):
                    if s.recv(1) == b"":
                        closed = True
                        break
            assert closed, f"still open after dripping {sent} bytes for 60 s"


def test_idle_keep_alive_connection_is_closed(tmp_path: Path) -> None:
    """After an answer, a keep-alive connection left idle is closed after its timeout."""
    repo = copy_fleet(tmp_path / "fleet")
    with running_server(repo, args=["--keep-alive-timeout", "1"]) as server:
        s = socket.create_connection(_address(server), timeout=30)
        with s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert s.recv(4096).startswith(b"HTTP/1.1 200")
            assert _closed_by_server(s)


def test_oversized_headers_are_refused(tmp_path: Path) -> None:
    """Headers beyond the cap get 431 and a closed connection, not unbounded buffering."""
    repo = copy_fleet(tmp_path / "fleet")
    with running_server(repo) as server:
        s = socket.create_connection(_address(server), timeout=30)
        with s:
            s.sendall(b"GET /healthz HTTP/1.1\r\n")
            with contextlib.suppress(OSError):
                for _ in range(100):
                    s.sendall(b"X-Filler: " + b"a" * 1000 + b"\r\n")
            answer = b""
            with contextlib.suppress(OSError):
                answer = s.recv(4096)
            assert answer.startswith(b"HTTP/1.1 431"), answer[:80]


def test_connection_flood_is_capped_below_the_file_limit(tmp_path: Path) -> None:
    """400 idle connections hold at most max_connections descriptors in the server, which
    answers again once the flood's accepted connections time out."""
    repo = copy_fleet(tmp_path / "fleet")
    args = ["--max-connections", "40", "--header-timeout", "3"]
    with running_server(repo, args=args) as server:
        pid = server.process.pid
        baseline = _open_fds(pid)
        with _sockets(server, 400, b"") as opened:
            last = opened[-20:]
            last[0].settimeout(30)
            for s in last[1:]:
                s.settimeout(2)
            assert all(_closed_by_server(s) for s in last)  # the newest were refused at once
            fds = _open_fds(pid)
            assert fds <= baseline + 45, f"{fds} descriptors open (baseline {baseline})"
        with httpx.Client(base_url=server.url, timeout=30) as c:
            wait_until(
                "the server to answer after the flood",
                lambda: c.get("/healthz").status_code == 200,
                timeout=60,
            )
