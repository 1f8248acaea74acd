"""Device identity: no device takes over another's id with the fleet secret (ADR 0010)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.cli import main as engine_main
from tests.server.conftest import ServerHandle
from tests.server.helpers import CHECKIN, bearer, snapshot, sqlite_url

A = "berlin-pos-0001"
B = "hamburg-srv-0002"
KEY_A = "a" * 43
KEY_IMPOSTOR = "i" * 43


def _enroll(c: httpx.Client, server: ServerHandle, key: str, **extra: Any) -> httpx.Response:
    body = {"device": A, "platform": "windows", "device_key": key, **extra}
    if "invite_code" not in extra and "token" not in extra:
        body["enrollment_secret"] = server.enrollment_secret
    return c.post("/v1/enroll", json=body)


def _checkin(c: httpx.Client, token: str, device: str = A) -> httpx.Response:
    return c.post(f"/v1/devices/{device}/checkin", json=CHECKIN, headers=bearer(token))


def _engine(server: ServerHandle, *args: str, capsys: pytest.CaptureFixture[str]) -> str:
    code = engine_main(["devices", *args, "-C", str(server.repo)])
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


def test_impostor_with_fleet_secret_waits_for_approval_and_takes_nothing(
    server: ServerHandle,
) -> None:
    """The fleet secret with another key files a pending request (403 approval_pending); the
    real device's token keeps working and its registry row is unchanged."""
    with server.client() as c:
        first = _enroll(c, server, KEY_A)
        assert first.status_code == 200, first.text
        token = first.json()["token"]
        row_before = snapshot(sqlite_url(server.repo))["devices"]
        for _ in range(2):  # asking again refreshes the same request
            r = _enroll(c, server, KEY_IMPOSTOR)
            assert r.status_code == 403 and r.json()["code"] == "approval_pending", r.text
            assert f"engine devices approve {A}" in r.json()["detail"]
        assert _checkin(c, token).status_code == 200
    assert snapshot(sqlite_url(server.repo))["devices"] == row_before
    with server.client(headers=server.admin_headers()) as c:
        requests = c.get("/v1/admin/enrollment-requests").json()
    assert [(q["device"], q["status"]) for q in requests] == [(A, "pending")]


def test_device_key_or_current_token_reenrolls_without_approval(server: ServerHandle) -> None:
    """The key proven at first enrollment, or the current token, enrolls the id again at
    once; the replaced token then gets 401 token_replaced saying how."""
    with server.client() as c:
        old = _enroll(c, server, KEY_A).json()["token"]
        by_key = _enroll(c, server, KEY_A)
        assert by_key.status_code == 200, by_key.text
        new = by_key.json()["token"]
        refused = _checkin(c, old)
        assert refused.status_code == 401 and refused.json()["code"] == "token_replaced"
        assert "its device key" in refused.json()["detail"]
        by_token = c.post("/v1/enroll", json={"device": A, "platform": "windows", "token": new})
        assert by_token.status_code == 200, by_token.text
        assert _checkin(c, by_token.json()["token"]).status_code == 200


def test_operator_approval_gives_the_token_and_the_old_holder_learns_why(
    server: ServerHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    """`engine devices approve` lets the pending request enroll on its next attempt; the
    previous token then gets 401 token_replaced naming the approval."""
    with server.client() as c:
        old = _enroll(c, server, KEY_A).json()["token"]
        assert _enroll(c, server, KEY_IMPOSTOR).json()["code"] == "approval_pending"
        listed = json.loads(_engine(server, "requests", "--json", capsys=capsys))
        assert [(q["device"], q["status"], q["key_fingerprint"]) for q in listed] == [
            (A, "pending", listed[0]["key_fingerprint"])
        ]
        assert "approved" in _engine(server, "approve", A, capsys=capsys)
        granted = _enroll(c, server, KEY_IMPOSTOR)
        assert granted.status_code == 200, granted.text
        assert _checkin(c, granted.json()["token"]).status_code == 200
        told = _checkin(c, old)
    assert told.status_code == 401 and told.json()["code"] == "token_replaced"
    assert "operator approval" in told.json()["detail"]
    assert json.loads(_engine(server, "requests", "--json", capsys=capsys)) == []


def test_rejected_request_is_refused_for_good(server: ServerHandle) -> None:
    """A request rejected through the admin API gets 403 enrollment_rejected from then on."""
    with server.client() as c:
        token = _enroll(c, server, KEY_A).json()["token"]
        _enroll(c, server, KEY_IMPOSTOR)
        decided = c.post(f"/v1/admin/devices/{A}/reject", headers=server.admin_headers())
        assert decided.status_code == 200 and decided.json()["status"] == "rejected"
        again = _enroll(c, server, KEY_IMPOSTOR)
        none_left = c.post(f"/v1/admin/devices/{A}/approve", headers=server.admin_headers())
        assert _checkin(c, token).status_code == 200
    assert again.status_code == 403 and again.json()["code"] == "enrollment_rejected"
    assert none_left.status_code == 404 and "no pending" in none_left.json()["detail"]


def test_invite_code_reenrolls_an_enrolled_id(
    server: ServerHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    """An operator's invite for an enrolled id is the normal way to enroll it again."""
    code = json.loads(_engine(server, "invite", A, "--json", capsys=capsys))["code"]
    with server.client() as c:
        old = _enroll(c, server, KEY_A).json()["token"]
        r = _enroll(c, server, KEY_IMPOSTOR, invite_code=code)
        assert r.status_code == 200, r.text
        assert _checkin(c, old).json()["code"] == "token_replaced"


def test_a_wrong_token_alone_enrolls_nothing(server: ServerHandle) -> None:
    """A request proving nothing but a made-up token enrolls neither a new id nor an enrolled
    one, and files no request (401 invalid_token)."""
    server.enroll(B, "linux")
    before = snapshot(sqlite_url(server.repo))
    with server.client() as c:
        for device in (A, B):
            body = {"device": device, "platform": "linux", "token": "made-up",
                    "device_key": KEY_IMPOSTOR}  # fmt: skip
            r = c.post("/v1/enroll", json=body)
            assert r.status_code == 401 and r.json()["code"] == "invalid_token", r.text
    assert snapshot(sqlite_url(server.repo)) == before


def test_wrong_secrets_are_throttled_per_id(server: ServerHandle) -> None:
    """After 5 wrong secrets for one id, even the right one gets 429 with Retry-After; another
    id is not affected."""
    with server.client() as c:
        wrong = {"device": A, "platform": "linux", "enrollment_secret": "guess"}
        for _ in range(5):
            assert c.post("/v1/enroll", json=wrong).status_code == 401
        blocked = _enroll(c, server, KEY_A)
        other = c.post("/v1/enroll", json={**wrong, "device": B})
    assert blocked.status_code == 429 and blocked.json()["code"] == "throttled"
    assert int(blocked.headers["Retry-After"]) >= 1
    assert other.status_code == 401
    assert server.log().count("further attempts throttled") == 1


def test_unknown_and_known_ids_get_the_same_answer(server: ServerHandle) -> None:
    """A wrong token for an enrolled id and any token for an unknown id: same status, code
    and message (but for the id), so ids cannot be probed."""
    server.enroll(A, "windows")
    with server.client() as c:
        known = _checkin(c, "made-up", A)
        unknown = _checkin(c, "made-up", "nowhere-0001")
    assert known.status_code == unknown.status_code == 401
    assert known.headers["WWW-Authenticate"] == unknown.headers["WWW-Authenticate"]
    assert known.json()["detail"].replace(A, "ID") == unknown.json()["detail"].replace(
        "nowhere-0001", "ID"
    )
    assert known.json()["code"] == unknown.json()["code"] == "invalid_token"


def test_approve_without_a_pending_request_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`engine devices approve` with nothing pending exits 1 naming the device."""
    assert engine_main(["devices", "approve", A, "-C", str(tmp_path)]) == 1
    assert f"device {A!r} has no pending enrollment request" in capsys.readouterr().err
