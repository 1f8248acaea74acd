"""`engine serve` and `engine devices` as commands: PostgreSQL, environment credentials,
startup errors, clean shutdown, the registry CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from engine.server.clock import FileClock
from engine.server.errors import ServerError
from tests.harness import wait_until
from tests.server.conftest import copy_fleet, running_server
from tests.server.helpers import CHECKIN, bearer, snapshot, sqlite_url

DEVICE = "berlin-pos-0001"


def _engine(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        check=False,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.postgres
def test_checkin_path_on_postgresql(tmp_path: Path, postgres_url: str) -> None:
    """Enrollment, check-in, heartbeat and A-on-B refusal work with the store on PostgreSQL."""
    repo = copy_fleet(tmp_path / "fleet")
    with running_server(repo, postgres_url) as server:
        token = server.enroll(DEVICE, "windows")
        other = server.enroll("hamburg-srv-0002", "linux")
        with server.client(headers=bearer(token)) as c:
            first = c.post(f"/v1/devices/{DEVICE}/checkin", json=CHECKIN)
            second = c.post(
                f"/v1/devices/{DEVICE}/checkin", json={**CHECKIN, "agent_version": "3.0.1"}
            )
            beat = {"version": "3.0.1", "at": "2026-11-27T10:00:00Z"}
            assert c.post(f"/v1/devices/{DEVICE}/heartbeat", json=beat).status_code == 204
            got = c.get(f"/v1/devices/{DEVICE}/heartbeat").json()
            wait_until(
                "the second report stored",
                lambda: any("3.0.1" in r for r in snapshot(postgres_url)["reports"]),
                timeout=30,
            )
            before = snapshot(postgres_url)
            refused = c.post("/v1/devices/hamburg-srv-0002/checkin", json=CHECKIN)
        assert snapshot(postgres_url) == before
        assert other
    assert first.status_code == 200 and second.status_code == 200, second.text
    assert second.json()["plan"] is None
    assert got["version"] == "3.0.1"
    assert refused.status_code == 401
    reports = before["reports"]
    assert [r[:3] for r in reports] == [(DEVICE, "3.0.1", "linux")]


def test_credentials_from_the_environment(tmp_path: Path) -> None:
    """ENGINE_ADMIN_TOKEN and ENGINE_ENROLLMENT_SECRET are used and no files are written."""
    repo = copy_fleet(tmp_path / "fleet")
    env = {"ENGINE_ADMIN_TOKEN": "adm-from-env", "ENGINE_ENROLLMENT_SECRET": "sec-from-env"}
    with running_server(repo, env=env) as server:
        token = server.enroll(DEVICE, "windows")
        with server.client() as c:
            ok = c.get("/v1/admin/devices", headers=bearer("adm-from-env"))
        assert "in the environment" in server.log()
    assert token and ok.status_code == 200
    assert not (repo / ".engine" / "admin.token").exists()
    assert not (repo / ".engine" / "enrollment.secret").exists()


def test_sigterm_stops_the_server_cleanly(tmp_path: Path) -> None:
    """SIGTERM ends `engine serve` with exit code 0 after it says it stopped."""
    repo = copy_fleet(tmp_path / "fleet")
    with running_server(repo) as server:
        server.enroll(DEVICE, "windows")
        os.killpg(server.process.pid, signal.SIGTERM)
        code = server.process.wait(20)
    assert code == 0
    assert "engine serve: stopped" in server.log()


def test_broken_repo_is_refused_at_startup(tmp_path: Path) -> None:
    """A repo with errors stops `engine serve` with exit 1 and the file:line problems."""
    repo = copy_fleet(tmp_path / "fleet")
    (repo / "inventory" / "broken.yaml").write_text("devices:\n  x: {platform: beos}\n")
    result = _engine("serve", "-C", str(repo), "--port", "0", cwd=repo)
    assert result.returncode == 1
    assert "broken.yaml:2" in result.stderr


def test_devices_cli_enroll_list_revoke(tmp_path: Path) -> None:
    """`engine devices enroll` prints a working token; `revoke` stops it; `list` shows both."""
    repo = copy_fleet(tmp_path / "fleet")
    enrolled = _engine(
        "devices", "enroll", DEVICE, "--platform", "windows", "--json", "-C", str(repo), cwd=repo
    )
    assert enrolled.returncode == 0, enrolled.stderr
    token = json.loads(enrolled.stdout)["token"]
    with running_server(repo) as server, server.client(headers=bearer(token)) as c:
        assert c.post(f"/v1/devices/{DEVICE}/checkin", json=CHECKIN).status_code == 200
        revoked = _engine("devices", "revoke", DEVICE, "-C", str(repo), cwd=repo)
        assert revoked.returncode == 0, revoked.stderr
        # The server's token cache keeps a row at most 5 s.
        deadline = datetime.now(UTC).timestamp() + 15
        status = 200
        while status == 200 and datetime.now(UTC).timestamp() < deadline:
            status = c.post(f"/v1/devices/{DEVICE}/checkin", json=CHECKIN).status_code
    assert status == 401
    listed = _engine("devices", "list", "--json", "-C", str(repo), cwd=repo)
    (row,) = json.loads(listed.stdout)
    assert row["device"] == DEVICE and row["revoked"] is True and row["agent_version"] == "3.0.0"
    unknown = _engine("devices", "revoke", "nobody", "-C", str(repo), cwd=repo)
    assert unknown.returncode == 1 and "never enrolled" in unknown.stderr
    readmitted = _engine(
        "devices", "enroll", DEVICE, "--platform", "windows", "-C", str(repo), cwd=repo
    )
    assert readmitted.returncode == 0 and "enrolled again" in readmitted.stderr
    rows = snapshot(sqlite_url(repo))["devices"]
    assert rows[0][4] is None  # revoked_at cleared by the operator's enrollment


def test_file_clock_offsets_and_instants(tmp_path: Path) -> None:
    """The test clock file: missing = real time, +N = offset, ISO = fixed, junk = ServerError."""
    path = tmp_path / "clock"
    clock = FileClock(path)
    assert abs((clock() - datetime.now(UTC)).total_seconds()) < 5
    path.write_text("+86400")
    assert 86_000 < (clock() - datetime.now(UTC)).total_seconds() < 86_800
    path.write_text("2026-11-28T02:30:00+01:00")
    assert clock() == datetime(2026, 11, 28, 1, 30, tzinfo=UTC)
    path.write_text("tomorrow")
    with pytest.raises(ServerError, match="ISO instant"):
        clock()


@pytest.mark.postgres
@pytest.mark.slow
def test_two_workers_share_the_postgresql_store(tmp_path: Path, postgres_url: str) -> None:
    """With --workers 2 every request may reach either process; enrollment and revocation hold."""
    repo = copy_fleet(tmp_path / "fleet")
    with running_server(repo, postgres_url, args=["--workers", "2"]) as server:
        with server.client() as c:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    if c.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
        token = server.enroll(DEVICE, "windows")
        with server.client(headers=bearer(token)) as c:
            codes = {
                c.post(f"/v1/devices/{DEVICE}/checkin", json=CHECKIN).status_code for _ in range(20)
            }
            revoke = c.post(f"/v1/admin/devices/{DEVICE}/revoke", headers=server.admin_headers())
            deadline = time.monotonic() + 15
            after = 200
            while after == 200 and time.monotonic() < deadline:
                after = c.post(f"/v1/devices/{DEVICE}/checkin", json=CHECKIN).status_code
    assert codes == {200}
    assert revoke.status_code == 200
    assert after == 401
    assert "device berlin-pos-0001 enrolled" in server.log()  # workers log too
