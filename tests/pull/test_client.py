"""ServerClient against a stub server: each failure maps to its error class, nothing is retried."""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from agent_runtime.errors import (
    ServerAuthError,
    ServerProtocolError,
    ServerUnavailableError,
)
from agent_runtime.server_client import MAX_RETRY_AFTER, ServerClient, parse_retry_after
from fleetbase.platform import Platform
from states.protocol import CheckinRequest
from tests.pull.stub import Answer, StubServer, running_stub

REPORT = CheckinRequest(platform=Platform.LINUX)


def _client(stub: StubServer, token: str | None = "token-1", timeout: float = 2.0) -> ServerClient:
    return ServerClient(stub.url, "dev-1", token=token, timeout=timeout)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_retry_after_forms() -> None:
    """Retry-After is read as seconds or an HTTP date, capped, and ignored when unparsable."""
    now = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30.0
    assert parse_retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now) == 0.0
    assert parse_retry_after("99999999", now) == MAX_RETRY_AFTER
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None
    assert parse_retry_after("nan", now) is None


def test_enroll_keeps_the_token_and_sends_the_secret() -> None:
    """Enrolling returns the token, keeps it for later requests, and check-in sends it."""
    with running_stub() as stub:
        client = _client(stub, token=None)
        answer = client.enroll(Platform.LINUX, "enroll-me", "0.1.0")
        assert (answer.token, client.token) == ("token-1", "token-1")
        client.checkin(REPORT)
        assert stub.paths("POST", "/checkin")[0].headers["Authorization"] == "Bearer token-1"
        assert "Authorization" not in stub.paths("POST", "/v1/enroll")[0].headers


def test_wrong_secret_is_an_auth_error() -> None:
    """A refused enrollment raises ServerAuthError with the status and leaves no token."""
    with running_stub() as stub:
        client = _client(stub, token=None)
        with pytest.raises(ServerAuthError) as err:
            client.enroll(Platform.LINUX, "wrong")
        assert err.value.status == 403 and "wrong enrollment secret" in str(err.value)
        assert client.token is None


@pytest.mark.parametrize(
    ("answer", "retry_after"),
    [
        (Answer(503, {"detail": "busy"}, {"Retry-After": "7"}), 7.0),
        (Answer(429, {"detail": "slow down"}, {"Retry-After": "2"}), 2.0),
        (Answer(500, b"boom"), None),
    ],
    ids=["503", "429", "500"],
)
def test_overload_is_unavailable_with_retry_after(
    answer: Answer, retry_after: float | None
) -> None:
    """429 and 5xx raise ServerUnavailableError carrying the server's Retry-After."""
    with running_stub() as stub:
        stub.checkins.append(answer)
        with pytest.raises(ServerUnavailableError) as err:
            _client(stub).checkin(REPORT)
        assert err.value.status == answer.status
        assert err.value.retry_after == retry_after
        assert len(stub.paths("POST", "/checkin")) == 1  # the client itself never retries


def test_bad_token_is_an_auth_error() -> None:
    """A check-in with a token the server does not know raises ServerAuthError (401)."""
    with running_stub() as stub:
        with pytest.raises(ServerAuthError) as err:
            _client(stub, token="stolen").checkin(REPORT)
        assert err.value.status == 401


def test_refused_request_and_garbage_answer_are_protocol_errors() -> None:
    """A 422 and an answer that is not a CheckinResponse raise ServerProtocolError."""
    with running_stub() as stub:
        stub.checkins.extend([Answer(422, {"detail": "field platform"}), Answer(200, {"plan": 3})])
        with pytest.raises(ServerProtocolError) as err:
            _client(stub).checkin(REPORT)
        assert err.value.status == 422 and "field platform" in str(err.value)
        with pytest.raises(ServerProtocolError, match="not a CheckinResponse"):
            _client(stub).checkin(REPORT)


def test_closed_port_and_slow_server_are_unavailable() -> None:
    """Nothing listening, or no answer within the timeout, raises ServerUnavailableError."""
    client = ServerClient(f"http://127.0.0.1:{_closed_port()}", "dev-1", token="t", timeout=1)
    with pytest.raises(ServerUnavailableError, match="cannot connect") as err:
        client.checkin(REPORT)
    assert err.value.status is None and err.value.retry_after is None
    with running_stub() as stub:
        stub.checkins.append(Answer(200, {"poll_interval": 1}, delay=1.5))
        with pytest.raises(ServerUnavailableError, match="no answer within"):
            _client(stub, timeout=0.3).checkin(REPORT)


def test_heartbeat_record_absent_then_present() -> None:
    """GET heartbeat answers None before any heartbeat and the posted one after."""
    from states.protocol import Heartbeat

    with running_stub() as stub:
        client = _client(stub)
        assert client.get_heartbeat() is None
        beat = Heartbeat.model_validate({"version": "3.0.1", "at": datetime.now(UTC), "pid": 7})
        client.post_heartbeat(beat)
        assert client.get_heartbeat() == beat


def test_absolute_resolves_server_paths_only() -> None:
    """Server paths become URLs on the server; URLs elsewhere stay as they are."""
    client = ServerClient("http://127.0.0.1:9/", "dev-1")
    assert client.absolute("/v1/artifacts/") == "http://127.0.0.1:9/v1/artifacts/"
    assert client.absolute("https://cdn.example/a") == "https://cdn.example/a"


def test_check_in_answer_dripped_a_byte_at_a_time_is_unavailable() -> None:
    """A server dripping its check-in answer (each byte well within the timeout) is ended
    once the whole answer has not arrived within ``timeout``: the converge lock is freed."""
    import threading
    from http.server import BaseHTTPRequestHandler

    from tests.harness.http import http_server

    done = threading.Event()
    body = b'{"plan": null, "poll_interval": 30}' + b" " * 200

    class Drip(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            for i in range(len(body)):
                if done.wait(0.05):
                    return
                try:
                    self.wfile.write(body[i : i + 1])
                    self.wfile.flush()
                except OSError:
                    return

    try:
        with http_server(Drip) as port:
            client = ServerClient(f"http://127.0.0.1:{port}", "dev-1", token="t", timeout=0.5)
            with pytest.raises(ServerUnavailableError, match=r"no answer within 0\.5s"):
                client.checkin(REPORT)
    finally:
        done.set()
