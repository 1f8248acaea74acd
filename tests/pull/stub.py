"""A tiny stand-in for `engine serve` on 127.0.0.1, for client-behaviour tests only.

It answers the device API of ``states.protocol`` from scripted answers, records
every request, and can serve release files; the end-to-end tests use the real
server instead.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.harness.http import http_server

__all__ = ["Answer", "Recorded", "StubServer", "running_stub"]


@dataclass(frozen=True)
class Answer:
    """A scripted HTTP answer."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass(frozen=True)
class Recorded:
    """A request the stub received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class StubServer:
    """State and script of the stub."""

    secret: str = "enroll-me"
    token: str = "token-1"
    poll_interval: float = 0.2
    #: answers to check-ins, in order; when empty: 200 with no plan
    checkins: deque[Answer] = field(default_factory=deque)
    #: answers to event posts, in order; when empty: 204
    event_answers: deque[Answer] = field(default_factory=deque)
    #: GET path -> bytes (manifests, signatures, artifacts)
    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    heartbeats: list[dict[str, Any]] = field(default_factory=list)
    port: int = 0
    enrollments: int = 0

    @property
    def url(self) -> str:
        """Base URL."""
        return f"http://127.0.0.1:{self.port}"

    def paths(self, method: str, suffix: str) -> list[Recorded]:
        """Recorded requests of ``method`` whose path ends with ``suffix``."""
        return [r for r in self.requests if r.method == method and r.path.endswith(suffix)]


def _handler(stub: StubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _answer(self, answer: Answer) -> None:
            if answer.delay:
                time.sleep(answer.delay)
            data = b"" if answer.body is None else (
                answer.body if isinstance(answer.body, bytes) else json.dumps(answer.body).encode()
            )  # fmt: skip
            self.send_response(answer.status)
            for k, v in answer.headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            if data and not isinstance(answer.body, bytes):
                self.send_header("Content-Type", "application/json")
            self.end_headers()
            with contextlib.suppress(OSError):
                self.wfile.write(data)

        def _record(self) -> Recorded:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            rec = Recorded(self.command, self.path, dict(self.headers.items()), body)
            stub.requests.append(rec)
            return rec

        def _authorized(self, rec: Recorded) -> bool:
            return rec.headers.get("Authorization") == f"Bearer {stub.token}"

        def do_GET(self) -> None:
            rec = self._record()
            if self.path.endswith("/heartbeat"):
                if not self._authorized(rec):
                    self._answer(Answer(401, {"detail": "bad token"}))
                elif stub.heartbeats:
                    self._answer(Answer(200, stub.heartbeats[-1]))
                else:
                    self._answer(Answer(404, {"detail": "no heartbeat yet"}))
                return
            data = stub.files.get(self.path)
            self._answer(Answer(200, data) if data is not None else Answer(404))

        def do_POST(self) -> None:
            rec = self._record()
            if self.path == "/v1/enroll":
                body = json.loads(rec.body)
                if body.get("enrollment_secret") != stub.secret:
                    self._answer(Answer(403, {"detail": "wrong enrollment secret"}))
                    return
                stub.enrollments += 1
                self._answer(Answer(200, {"device": body["device"], "token": stub.token,
                                          "poll_interval": stub.poll_interval}))  # fmt: skip
                return
            if not self._authorized(rec):
                self._answer(Answer(401, {"detail": "bad token"}))
                return
            if self.path.endswith("/checkin"):
                answer = stub.checkins.popleft() if stub.checkins else None
                self._answer(answer or Answer(200, {"poll_interval": stub.poll_interval}))
            elif self.path.endswith("/events"):
                answer = stub.event_answers.popleft() if stub.event_answers else None
                if answer is None or answer.status < 300:
                    stub.events.extend(json.loads(rec.body)["events"])
                self._answer(answer or Answer(204))
            elif self.path.endswith("/heartbeat"):
                stub.heartbeats.append(json.loads(rec.body))
                self._answer(Answer(204))
            else:
                self._answer(Answer(404))

    return Handler


@contextlib.contextmanager
def running_stub(stub: StubServer | None = None) -> Iterator[StubServer]:
    """Run a stub on a free 127.0.0.1 port for the duration of the block."""
    stub = stub or StubServer()
    with http_server(_handler(stub)) as port:
        stub.port = port
        yield stub
