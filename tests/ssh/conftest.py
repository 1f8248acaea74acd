"""Fixtures: a real OpenSSH server on 127.0.0.1 (skipped locally without sshd, fails in CI)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.sshd import Sshd, sshd_missing


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    """One sshd for the test session, with its own host key and authorized client key."""
    why = sshd_missing()
    if why is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{why} (CI must run the SSH tests)")
        pytest.skip(why)
    server = Sshd(tmp_path_factory.mktemp("sshd"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def known_hosts(sshd: Sshd, tmp_path: Path) -> Path:
    """A known_hosts file that lists the test sshd's real host key."""
    return sshd.known_hosts(tmp_path / "known_hosts")
