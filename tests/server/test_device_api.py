"""The device API of a real `engine serve`: enrollment, check-in, isolation between devices,
refusals that change nothing, revocation."""

from __future__ import annotations

import hashlib
import json
import socket
import stat

import pytest

from tests.server.conftest import ServerHandle
from tests.server.helpers import CHECKIN, bearer, snapshot, sqlite_url, stored_reports

A = "berlin-pos-0001"
B = "hamburg-srv-0002"


def _device_paths(device: str) -> list[tuple[str, str, object]]:
    beat = {"version": "3.0.0", "at": "2026-11-27T10:00:00Z", "pid": 42}
    event = {"target": "3.0.1", "step": "download", "status": "ok", "at": "2026-11-27T10:00:00Z"}
    return [
        ("POST", f"/v1/devices/{device}/checkin", CHECKIN),
        ("POST", f"/v1/devices/{device}/events", {"events": [event]}),
        ("POST", f"/v1/devices/{device}/heartbeat", beat),
        ("GET", f"/v1/devices/{device}/heartbeat", None),
    ]


def test_credentials_generated_private_and_announced(server: ServerHandle) -> None:
    """The first start writes admin token and enrollment secret 0600 and prints where."""
    for name in ("admin.token", "enrollment.secret"):
        path = server.repo / ".engine" / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert str(path) in server.log()
    assert server.admin_token not in server.log()
    assert server.enrollment_secret not in server.log()


def test_enroll_wrong_secret_is_refused_and_stores_nothing(server: ServerHandle) -> None:
    """A wrong enrollment secret gets 401 and no device row."""
    url = sqlite_url(server.repo)
    before = snapshot(url)
    with server.client() as c:
        r = c.post(
            "/v1/enroll", json={"device": A, "platform": "windows", "enrollment_secret": "nope"}
        )
    assert r.status_code == 401
    assert "enrollment secret" in r.json()["detail"]
    assert snapshot(url) == before


def test_enroll_unknown_device_is_refused(server: ServerHandle) -> None:
    """A device id that is not in the inventory cannot enroll (403), nothing stored."""
    url = sqlite_url(server.repo)
    before = snapshot(url)
    with server.client() as c:
        r = c.post(
            "/v1/enroll",
            json={
                "device": "intruder-9",
                "platform": "linux",
                "enrollment_secret": server.enrollment_secret,
            },
        )
    assert r.status_code == 403
    assert "inventory" in r.json()["detail"]
    assert snapshot(url) == before


def test_enroll_stores_only_the_token_hash(server: ServerHandle) -> None:
    """Enrollment answers a fresh token; the store holds its sha256, never the token."""
    token = server.enroll(A, "windows")
    assert len(token) >= 40
    rows = snapshot(sqlite_url(server.repo))["devices"]
    assert len(rows) == 1
    assert rows[0][0] == A
    assert hashlib.sha256(token.encode()).hexdigest() in rows[0]
    assert token not in json.dumps(rows, default=str)


def test_fleet_secret_cannot_replace_an_enrolled_token(server: ServerHandle) -> None:
    """Enrolling an enrolled id again with the fleet secret only is refused (403,
    approval_pending or already_enrolled); the device's token keeps working."""
    token = server.enroll(A, "windows")
    url = sqlite_url(server.repo)
    devices_before = snapshot(url)["devices"]
    with server.client() as c:
        again = c.post(
            "/v1/enroll",
            json={
                "device": A,
                "platform": "windows",
                "enrollment_secret": server.enrollment_secret,
            },
        )
        assert c.post(f"/v1/devices/{A}/checkin", json=CHECKIN, headers=bearer(token)).is_success
    assert again.status_code == 403 and again.json()["code"] == "already_enrolled", again.text
    assert snapshot(url)["devices"] == devices_before


def test_checkin_round_trip_stores_the_report(server: ServerHandle) -> None:
    """A check-in answers no plan and a jittered poll interval, and stores the report."""
    token = server.enroll(A, "windows")
    with server.client() as c:
        r = c.post(f"/v1/devices/{A}/checkin", json=CHECKIN, headers=bearer(token))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["plan"] is None and body["release"] is None
    assert 54 <= body["poll_interval"] <= 66  # 60 s +- 10 %
    (report,) = stored_reports(sqlite_url(server.repo))
    assert report[:3] == (A, "3.0.0", "linux")
    assert "committed" in report and "3.0.1" in report  # last_result, tx_target


@pytest.mark.parametrize("index", range(4), ids=["checkin", "events", "post-beat", "get-beat"])
def test_token_of_a_on_b_paths_is_forbidden(server: ServerHandle, index: int) -> None:
    """A's token on B's paths gets 401 (as an unknown id would) and reads or writes nothing
    of B."""
    token_a = server.enroll(A, "windows")
    server.enroll(B, "linux")
    url = sqlite_url(server.repo)
    before = snapshot(url)
    method, path, body = _device_paths(B)[index]
    with server.client() as c:
        r = c.request(method, path, json=body, headers=bearer(token_a))
    assert r.status_code == 401 and r.json()["code"] == "invalid_token"
    assert B in r.json()["detail"]
    assert snapshot(url) == before


@pytest.mark.parametrize("index", range(4), ids=["checkin", "events", "post-beat", "get-beat"])
def test_device_paths_without_token_are_unauthorized(server: ServerHandle, index: int) -> None:
    """Device endpoints without a token get 401 with WWW-Authenticate, nothing stored."""
    server.enroll(A, "windows")
    url = sqlite_url(server.repo)
    before = snapshot(url)
    method, path, body = _device_paths(A)[index]
    with server.client() as c:
        r = c.request(method, path, json=body)
        garbage = c.request(method, path, json=body, headers={"Authorization": "Basic eDp5"})
    assert r.status_code == 401 and garbage.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert snapshot(url) == before


def test_events_and_heartbeats_are_stored_and_read_back(server: ServerHandle) -> None:
    """Events are appended; the latest heartbeat is kept and returned by GET."""
    token = server.enroll(A, "windows")
    with server.client(headers=bearer(token)) as c:
        assert c.get(f"/v1/devices/{A}/heartbeat").status_code == 404
        for _method, path, body in _device_paths(A)[1:3]:
            assert c.post(path, json=body).status_code == 204
        newer = {"version": "3.0.1", "at": "2026-11-27T10:05:00+01:00"}
        assert c.post(f"/v1/devices/{A}/heartbeat", json=newer).status_code == 204
        got = c.get(f"/v1/devices/{A}/heartbeat")
    assert got.status_code == 200
    assert got.json() == {"version": "3.0.1", "at": "2026-11-27T09:05:00Z", "pid": None}
    rows = snapshot(sqlite_url(server.repo))
    assert len(rows["heartbeats"]) == 1
    assert [e[1:5] for e in rows["events"]] == [(A, "3.0.1", "download", "ok")]


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"", 400, "not valid JSON"),
        (b'{"platform": "beos"}', 422, "platform"),
        (b'{"platform": "linux", "agent_version": "x y"}', 422, "agent_version"),
        (b"[1, 2]", 422, "CheckinRequest"),
    ],
    ids=["syntax", "empty", "platform", "version", "list"],
)
def test_malformed_checkin_is_refused_and_changes_nothing(
    server: ServerHandle, body: bytes, status: int, words: str
) -> None:
    """Bad JSON gets 400, a wrong shape 422, with a message naming the problem; nothing stored."""
    token = server.enroll(A, "windows")
    url = sqlite_url(server.repo)
    before = snapshot(url)
    with server.client() as c:
        r = c.post(
            f"/v1/devices/{A}/checkin",
            content=body,
            headers={**bearer(token), "Content-Type": "application/json"},
        )
    assert r.status_code == status
    assert words in r.json()["detail"]
    assert snapshot(url) == before


@pytest.mark.parametrize("what", ["checkin", "events", "enroll"])
def test_oversized_body_is_refused_with_413(server: ServerHandle, what: str) -> None:
    """A body over 64 KiB gets 413 (declared by Content-Length) and changes nothing."""
    token = server.enroll(A, "windows")
    url = sqlite_url(server.repo)
    before = snapshot(url)
    path = "/v1/enroll" if what == "enroll" else f"/v1/devices/{A}/{what}"
    big = b'{"platform": "linux", "detail": "' + b"x" * 70_000 + b'"}'
    with server.client() as c:
        r = c.post(path, content=big, headers={**bearer(token), "Content-Type": "application/json"})
    assert r.status_code == 413
    assert "limit" in r.json()["detail"]
    assert snapshot(url) == before


def test_oversized_chunked_body_is_refused_with_413(server: ServerHandle) -> None:
    """A chunked body without Content-Length is counted while streaming: 413 past the limit."""
    token = server.enroll(A, "windows")
    url = sqlite_url(server.repo)
    before = snapshot(url)

    def chunks() -> object:
        for _ in range(20):
            yield b"x" * 8192

    with server.client() as c:
        r = c.post(f"/v1/devices/{A}/checkin", content=chunks(), headers=bearer(token))  # type: ignore[arg-type]
    assert r.status_code == 413
    assert snapshot(url) == before


def test_truncated_body_stores_nothing(server: ServerHandle) -> None:
    """A client that sends less than its Content-Length and hangs up stores nothing."""
    token = server.enroll(A, "windows")
    url = sqlite_url(server.repo)
    before = snapshot(url)
    host, port = server.url.removeprefix("http://").split(":")
    body = json.dumps(CHECKIN).encode()
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(
            f"POST /v1/devices/{A}/checkin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}"
            f"\r\nContent-Length: {len(body) + 100}\r\n\r\n".encode()
            + body
        )
        s.shutdown(socket.SHUT_WR)
        while s.recv(4096):
            pass
    # A complete check-in afterwards is stored: the server noticed the first one ended.
    with server.client() as c:
        assert c.post(f"/v1/devices/{A}/checkin", json=CHECKIN, headers=bearer(token)).is_success
    stored_reports(url)
    after = snapshot(url)
    assert before["reports"] == [] and len(after["reports"]) == 1
    assert after["events"] == before["events"]


def test_revocation_takes_effect_at_once(server: ServerHandle) -> None:
    """After the operator revokes a device, its token gets 401 and it cannot re-enroll."""
    token = server.enroll(A, "windows")
    with server.client() as c:
        assert c.post(f"/v1/devices/{A}/checkin", json=CHECKIN, headers=bearer(token)).is_success
        # the report is written behind: let it land so the snapshot below holds it
        stored_reports(sqlite_url(server.repo))
        r = c.post(f"/v1/admin/devices/{A}/revoke", headers=server.admin_headers())
        assert r.status_code == 200, r.text
        before = snapshot(sqlite_url(server.repo))
        refused = c.post(f"/v1/devices/{A}/checkin", json=CHECKIN, headers=bearer(token))
        again = c.post(
            "/v1/enroll",
            json={
                "device": A,
                "platform": "windows",
                "enrollment_secret": server.enrollment_secret,
            },
        )
    assert refused.status_code == 401 and "revoked" in refused.json()["detail"]
    assert again.status_code == 403 and "revoked" in again.json()["detail"]
    assert snapshot(sqlite_url(server.repo)) == before


def test_unknown_device_checkin_is_unauthorized(server: ServerHandle) -> None:
    """A check-in for a device that never enrolled gets 401 and stores nothing."""
    url = sqlite_url(server.repo)
    before = snapshot(url)
    with server.client() as c:
        r = c.post(f"/v1/devices/{A}/checkin", json=CHECKIN, headers=bearer("made-up"))
        bad_id = c.post("/v1/devices/a%20b/checkin", json=CHECKIN, headers=bearer("made-up"))
    assert r.status_code == 401 and "not valid" in r.json()["detail"]
    assert bad_id.status_code == 404
    assert snapshot(url) == before
