"""The runtime's NATS link against real nats-servers: nudges, auth from files, outages."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent_runtime.config import DeviceNatsSettings
from agent_runtime.nats_link import NatsLink
from tests.harness import free_port, wait_until
from tests.nats.conftest import Bus

NATS_SERVER = Path("/usr/sbin/nats-server")


@pytest.fixture
def auth_server(tmp_path: Path, nats_url: str) -> Iterator[str]:
    """A nats-server of the test's own on a free port that wants user 'dev' / 's3cret'."""
    if not NATS_SERVER.exists():
        why = f"{NATS_SERVER} is missing (Debian package nats-server)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{why}: CI must run the NATS tests")
        pytest.skip(why)
    port = free_port()
    conf = tmp_path / "nats.conf"
    conf.write_text(
        f'listen: "127.0.0.1:{port}"\nauthorization {{ user: dev, password: "s3cret" }}\n'
    )
    log = (tmp_path / "nats.log").open("wb")
    proc = subprocess.Popen([str(NATS_SERVER), "-c", str(conf)], stdout=log, stderr=log)
    try:
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def _link(settings: DeviceNatsSettings, said: list[str]) -> NatsLink:
    return NatsLink(settings, "dev-00", out=said.append)


def test_a_nudge_ends_the_wait_for_the_next_check_in(bus: Bus) -> None:
    """A nudge on the device's subject ends a 10-minute wait; one for another device does
    not; the spread the nudge asks for is honoured as a random delay, not ignored."""
    said: list[str] = []
    link = _link(DeviceNatsSettings(**bus.device_settings()), said)
    link.start()
    try:
        wait_until("the link to connect", link.connected.is_set, timeout=15)
        stop = threading.Event()
        result: list[bool] = []
        waiter = threading.Thread(target=lambda: result.append(link.wait(stop, 600)))
        waiter.start()
        bus.publish(bus.nudge_subject.replace("{device}", "dev-01"), [b'{"spread": 0}'])
        bus.publish(bus.nudge_subject.replace("{device}", "dev-00"), [b'{"spread": 0.2}'])
        waiter.join(30)
        assert result == [True] and link.nudges == 1
    finally:
        link.stop()


def test_credentials_come_from_a_file_and_a_wrong_password_is_said_once(
    auth_server: str, tmp_path: Path
) -> None:
    """With the right user:password file the link connects; with a wrong one it says once
    that it cannot connect (naming the server) and keeps trying without flooding the log."""
    good = tmp_path / "good"
    good.write_text("dev:s3cret\n")
    bad = tmp_path / "bad"
    bad.write_text("dev:nope\n")
    said: list[str] = []
    link = _link(DeviceNatsSettings(url=auth_server, user_password_file=good), said)
    link.start()
    try:
        wait_until("the link to connect with the password", link.connected.is_set, timeout=15)
    finally:
        link.stop()
    said_bad: list[str] = []
    link = _link(DeviceNatsSettings(url=auth_server, user_password_file=bad), said_bad)
    link.start()
    try:
        wait_until("the refusal to be said", lambda: bool(said_bad), timeout=15)
        stop = threading.Event()
        link.wait(stop, 3)  # let it retry a few times
        assert not link.connected.is_set()
        refusals = [s for s in said_bad if "cannot connect to NATS" in s]
        assert len(refusals) == 1 and auth_server in refusals[0], said_bad
    finally:
        link.stop()


def test_settings_refuse_inline_credentials_and_bad_subjects(tmp_path: Path) -> None:
    """Credentials in the URL, two kinds of credentials at once, a subject without
    {device} or with a wildcard are refused with the reason; an unreadable password file
    is named when connecting."""
    with pytest.raises(ValidationError, match="credentials in the NATS URL are refused"):
        DeviceNatsSettings(url="nats://dev:s3cret@127.0.0.1:4222")
    with pytest.raises(ValidationError, match="not a NATS URL"):
        DeviceNatsSettings(url="http://127.0.0.1:4222")
    with pytest.raises(ValidationError, match="at most one of"):
        DeviceNatsSettings(url="nats://x:1", token_file=tmp_path / "a", user_password_file=tmp_path)
    with pytest.raises(ValidationError, match="must contain '\\{device\\}'"):
        DeviceNatsSettings(url="nats://x:1", nudge_subject="fleet.nudge")
    with pytest.raises(ValidationError, match="without spaces or wildcards"):
        DeviceNatsSettings(url="nats://x:1", heartbeat_subject="fleet.*.{device}")
    missing = DeviceNatsSettings(url="nats://x:1", user_password_file=tmp_path / "nope")
    with pytest.raises(ValueError, match=r"user_password_file .*nope: cannot read it"):
        missing.connect_options()


def test_runtime_link_says_once_when_nats_is_unreachable() -> None:
    """With nothing listening the link says once that it cannot connect and waits stay
    ordinary timed waits (polling goes on)."""
    port = free_port()
    said: list[str] = []
    link = _link(DeviceNatsSettings(url=f"nats://127.0.0.1:{port}"), said)
    link.start()
    try:
        wait_until("the link to say it cannot connect", lambda: bool(said), timeout=15)
        assert link.wait(threading.Event(), 2.5) is False
        assert [s for s in said if "cannot connect" in s] == [said[0]]
        assert f"nats://127.0.0.1:{port}" in said[0]
    finally:
        link.stop()
