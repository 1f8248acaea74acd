"""engine serve records agents' heartbeats from NATS (JetStream durable consumer)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests

from tests.e2e.conftest import fleet_group, specs
from tests.harness import OperatorRepo, ServerProcess, free_port, wait_until
from tests.nats.conftest import Bus

pytestmark = pytest.mark.slow


def _beat(version: str, at: datetime, **extra: object) -> bytes:
    return json.dumps({"version": version, "at": at.isoformat(), "pid": 42, **extra}).encode()


def _enroll(server: ServerProcess, device: str) -> str:
    resp = requests.post(
        server.url + "/v1/enroll",
        json={"device": device, "platform": "linux", "enrollment_secret": server.enrollment_secret},
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    return str(resp.json()["token"])


def _recorded(server: ServerProcess, device: str, token: str) -> str | None:
    resp = requests.get(
        f"{server.url}/v1/devices/{device}/heartbeat",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    return str(resp.json()["version"]) if resp.status_code == 200 else None


def _consuming(server: ServerProcess) -> bool:
    return "NATS: recording heartbeats" in server.log.read_text(errors="replace")


def test_heartbeats_from_the_bus_are_recorded_and_none_is_lost_while_the_engine_is_down(
    bus: Bus, tmp_path: Path
) -> None:
    """A heartbeat published on the bus becomes the device's heartbeat record; one published
    while engine serve is stopped is recorded after it starts again; an older, malformed,
    mislabelled or far-future heartbeat, or one of a device that never enrolled, changes
    nothing."""
    repo = OperatorRepo(tmp_path / "fleet")
    repo.create(specs(3), fleet_group("3.0.0"), settings=bus.engine_settings())
    server = ServerProcess(repo, tmp_path / "server.log")
    server.start()
    try:
        wait_until("the heartbeat consumer", lambda: _consuming(server), timeout=30)
        tokens = {d: _enroll(server, d) for d in ("dev-00", "dev-01")}
        subject = bus.heartbeat_subject.replace("{device}", "dev-00")
        now = datetime.now(UTC)
        bus.publish(subject, [_beat("3.0.1", now)])
        wait_until(
            "dev-00's bus heartbeat to be recorded",
            lambda: _recorded(server, "dev-00", tokens["dev-00"]) == "3.0.1",
            timeout=30,
        )

        server.stop()
        bus.publish(subject, [_beat("3.0.2", now + timedelta(seconds=1))])
        server.start()
        wait_until(
            "the heartbeat sent while the engine was down to be recorded",
            lambda: _recorded(server, "dev-00", tokens["dev-00"]) == "3.0.2",
            timeout=30,
        )

        # Each of these must change nothing; a last, good heartbeat of dev-01 (read after
        # them, in stream order) shows they were all read.
        bus.publish(
            subject,
            [
                _beat("3.0.0", now - timedelta(hours=1)),  # older than the record
                b"not json",
                _beat("3.0.3", now + timedelta(seconds=2), device="dev-01"),  # mislabelled
                _beat("3.0.3", now + timedelta(days=400)),  # a clock far ahead
            ],
        )
        bus.publish(bus.heartbeat_subject.replace("{device}", "dev-02"), [_beat("3.0.3", now)])
        bus.publish(bus.heartbeat_subject.replace("{device}", "dev-01"), [_beat("3.0.1", now)])
        wait_until(
            "dev-01's heartbeat to be recorded",
            lambda: _recorded(server, "dev-01", tokens["dev-01"]) == "3.0.1",
            timeout=30,
        )
        assert _recorded(server, "dev-00", tokens["dev-00"]) == "3.0.2"
        rows = server.admin("GET", "/v1/admin/devices").json()
        assert {r["device"] for r in rows if r.get("heartbeat_version")} == {"dev-00", "dev-01"}
    finally:
        server.stop()


def test_engine_serve_keeps_serving_while_nats_is_unreachable(tmp_path: Path) -> None:
    """With NATS configured but nothing listening, engine serve starts, answers devices and
    logs one clear line about NATS (polling still works)."""
    repo = OperatorRepo(tmp_path / "fleet")
    port = free_port()
    repo.create(
        specs(1), fleet_group("3.0.0"), settings={"nats": {"url": f"nats://127.0.0.1:{port}"}}
    )
    server = ServerProcess(repo, tmp_path / "server.log")
    server.start()
    try:
        token = _enroll(server, "dev-00")
        assert token
        wait_until(
            "the NATS warning",
            lambda: (
                f"cannot connect to NATS at nats://127.0.0.1:{port}"
                in server.log.read_text(errors="replace")
            ),
            timeout=30,
        )
        log = server.log.read_text(errors="replace")
        assert log.count("cannot connect to NATS") == 1
        assert requests.get(server.url + "/healthz", timeout=5).status_code == 200
    finally:
        server.stop()
