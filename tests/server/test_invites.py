"""Single-use invite codes on a real `engine serve`: issued by `engine devices invite`,
redeemed once by the named device only; a reused, expired or wrong code is a 403 that
changes nothing, and the fleet secret keeps working."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
from sqlalchemy import select

from engine.cli import main as engine_main
from engine.store import Store
from engine.store.schema import invites
from tests.server.conftest import ServerHandle
from tests.server.helpers import snapshot, sqlite_url

A = "berlin-pos-0001"
B = "hamburg-srv-0002"


def everything(repo: Path) -> dict[str, list[tuple[object, ...]]]:
    """The device tables and the invites table, to compare before and after a refusal."""
    rows = snapshot(sqlite_url(repo))
    with Store.open(sqlite_url(repo), migrate=False) as store, store.read() as conn:
        rows["invites"] = sorted(tuple(r) for r in conn.execute(select(invites)))
    return dict(rows)


def invite(repo: Path, device: str, *extra: str) -> dict[str, str]:
    """Run `engine devices invite DEVICE --json` against the repo's store."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = engine_main(["devices", "invite", device, "-C", str(repo), "--json", *extra])
    assert code == 0
    data: dict[str, str] = json.loads(out.getvalue())
    return data


def enroll(server: ServerHandle, device: str, code: str) -> tuple[int, dict[str, object]]:
    """POST /v1/enroll with an invite code; (status, JSON body)."""
    body = {"device": device, "platform": "linux", "invite_code": code}
    with server.client() as c:
        r = c.post("/v1/enroll", json=body)
    return r.status_code, r.json()


def test_invite_code_enrolls_its_device_once(server: ServerHandle) -> None:
    """A fresh code gives the device a working token; the same code again is refused
    (403, 'already used') and the store does not change."""
    issued = invite(server.repo, A)
    assert issued["device"] == A and len(issued["code"]) >= 20
    status, body = enroll(server, A, issued["code"])
    assert status == 200 and body["device"] == A
    token = body["token"]
    before = everything(server.repo)
    status, body = enroll(server, A, issued["code"])
    assert status == 403 and "already used" in str(body["detail"])
    assert everything(server.repo) == before
    with server.client() as c:
        r = c.get(f"/v1/devices/{A}/heartbeat", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 404  # the first token still works: no heartbeat yet, not 401


@pytest.mark.parametrize("case", ["wrong", "other-device", "expired", "never-issued"])
def test_bad_invite_codes_are_refused_and_change_nothing(server: ServerHandle, case: str) -> None:
    """A wrong code, another device's code, an expired code or a device without an invite
    gets 403 with a clear message; the device stays unenrolled and the invite unused."""
    issued = invite(server.repo, A, "--ttl", "1s" if case == "expired" else "1h")
    code, device = issued["code"], A
    if case == "wrong":
        code = code[:-1] + ("2" if code[-1] != "2" else "3")
    elif case == "other-device":
        invite(server.repo, B)
        device = B
    elif case == "never-issued":
        device = B
    elif case == "expired":
        import time

        time.sleep(1.5)
    before = everything(server.repo)
    status, body = enroll(server, device, code)
    assert status == 403, body
    detail = str(body["detail"])
    assert ("expired" in detail) if case == "expired" else ("wrong invite code" in detail)
    assert everything(server.repo) == before
    if case in ("wrong", "other-device"):  # the real code still works afterwards
        assert enroll(server, A, issued["code"])[0] == 200


def test_fleet_secret_still_enrolls_and_request_needs_exactly_one_proof(
    server: ServerHandle,
) -> None:
    """The enrollment secret keeps working; a request with both or no proof is a 422."""
    assert server.enroll(A)
    with server.client() as c:
        both = {"device": A, "platform": "linux", "invite_code": "x", "enrollment_secret": "y"}
        neither = {"device": A, "platform": "linux"}
        for body in (both, neither):
            r = c.post("/v1/enroll", json=body)
            assert r.status_code == 422 and "invite_code" in r.json()["detail"]


def test_invite_command_rejects_a_bad_ttl(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--ttl soon` is refused naming the option, before the store is touched."""
    assert engine_main(["devices", "invite", A, "-C", str(tmp_path), "--ttl", "soon"]) == 1
    assert "--ttl" in capsys.readouterr().err
    assert not (tmp_path / ".engine").exists()
