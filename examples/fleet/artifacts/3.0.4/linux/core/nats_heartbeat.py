"""Heartbeats over NATS, the way the field's agents send them (on when $NATS_URL is set).

Standard library only (agents in the field run whatever Python the device has):
the NATS client protocol's CONNECT, PUB and PING/PONG over a plain socket.
Subject: $NATS_HEARTBEAT_SUBJECT (default ``fleet.heartbeat.<$AGENT_DEVICE_ID>``);
payload: ``{"device", "version", "at", "pid"}``. A failed send is retried with
a new connection at the next beat; the agent never stops for it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from datetime import datetime, timezone
from urllib.parse import urlsplit

#: Seconds to wait for the server (connect, and the PONG that confirms a beat).
TIMEOUT = 3.0


class NatsHeartbeat:
    """Publishes this agent's heartbeat on one subject of one NATS server."""

    def __init__(self, url: str, subject: str, device: str | None) -> None:
        parts = urlsplit(url)
        self.address = (parts.hostname or "127.0.0.1", parts.port or 4222)
        self.subject = subject
        self.device = device
        self.sock: socket.socket | None = None
        self.buffer = b""

    @classmethod
    def from_env(cls) -> NatsHeartbeat | None:
        """The publisher $NATS_URL asks for, or None when it is not set."""
        url = os.environ.get("NATS_URL")
        if not url:
            return None
        device = os.environ.get("AGENT_DEVICE_ID") or None
        subject = os.environ.get("NATS_HEARTBEAT_SUBJECT") or f"fleet.heartbeat.{device}"
        return cls(url, subject, device)

    def send(self, version: str) -> bool:
        """Publish one heartbeat of ``version`` and wait for the server to confirm it."""
        # timezone.utc, not datetime.UTC: agents in the field run Python older than 3.11
        now = datetime.now(timezone.utc)  # noqa: UP017
        beat = {"device": self.device, "version": version, "at": now.isoformat(),
                "pid": os.getpid()}  # fmt: skip
        body = json.dumps(beat).encode()
        try:
            sock = self._connected()
            sock.sendall(b"PUB %s %d\r\n%s\r\nPING\r\n" % (self.subject.encode(), len(body), body))
            self._until_pong(sock)
            return True
        except (OSError, ValueError):
            self.close()
            return False

    def close(self) -> None:
        """Drop the connection (the next beat opens a new one)."""
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
        self.sock = None
        self.buffer = b""

    def _connected(self) -> socket.socket:
        if self.sock is not None:
            return self.sock
        sock = socket.create_connection(self.address, timeout=TIMEOUT)
        self.sock = sock
        self._line(sock)  # INFO {...}
        options = {"verbose": False, "pedantic": False, "name": "example agent",
                   "lang": "python", "version": "1", "protocol": 1}  # fmt: skip
        sock.sendall(b"CONNECT " + json.dumps(options).encode() + b"\r\n")
        return sock

    def _until_pong(self, sock: socket.socket) -> None:
        """Read until the server's PONG, answering its PINGs; ValueError on -ERR."""
        while True:
            line = self._line(sock)
            if line == b"PONG":
                return
            if line == b"PING":
                sock.sendall(b"PONG\r\n")
            elif line.startswith(b"-ERR"):
                raise ValueError(line.decode(errors="replace"))

    def _line(self, sock: socket.socket) -> bytes:
        while b"\r\n" not in self.buffer:
            data = sock.recv(4096)
            if not data:
                raise OSError("the NATS server closed the connection")
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line
