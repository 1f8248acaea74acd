"""Fixtures for the NATS tests: the real nats-server on 127.0.0.1:4222 (JetStream on).

Without it the tests skip locally and fail when $CI is "true". Every test gets
its own subject prefix and stream name, and its streams are deleted afterwards,
so tests (and parallel runs) never see each other's messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.e2e.conftest import make_fleet  # the fleet fixture, shared with the e2e tests

__all__ = ["Bus", "bus", "make_fleet", "nats_url"]

#: The NATS server the tests use ($ENGINE_TEST_NATS overrides).
NATS_URL = os.environ.get("ENGINE_TEST_NATS", "nats://127.0.0.1:4222")


def _probe(url: str) -> str | None:
    """None when a NATS server with JetStream answers at ``url``, else why not."""
    host, _, port = url.split("://", 1)[1].partition(":")
    try:
        with socket.create_connection((host, int(port or 4222)), timeout=3) as sock:
            line = sock.makefile("rb").readline()
    except OSError as e:
        return f"no NATS server at {url}: {e}"
    if not line.startswith(b"INFO "):
        return f"{url} does not speak NATS: {line[:60]!r}"
    info = json.loads(line[5:])
    if not info.get("jetstream"):
        return f"the NATS server at {url} has JetStream off"
    return None


@pytest.fixture(scope="session")
def nats_url() -> str:
    """URL of the real NATS server (JetStream on); skip locally, fail in CI without it."""
    why = _probe(NATS_URL)
    if why is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{why} (CI must run the NATS tests)")
        pytest.skip(why)
    return NATS_URL


@dataclass(frozen=True)
class Bus:
    """One test's corner of the NATS server: subjects under ``prefix``, its own stream."""

    url: str
    prefix: str
    stream: str

    @property
    def nudge_subject(self) -> str:
        """Nudge subject template."""
        return f"{self.prefix}.nudge.{{device}}"

    @property
    def heartbeat_subject(self) -> str:
        """Heartbeat subject template."""
        return f"{self.prefix}.heartbeat.{{device}}"

    def engine_settings(self, **extra: Any) -> dict[str, Any]:
        """engine.yaml's ``nats`` section for this bus."""
        return {
            "nats": {
                "url": self.url,
                "nudge_subject": self.nudge_subject,
                "heartbeat_subject": self.heartbeat_subject,
                "stream": self.stream,
                "nudge_spread": "0.5s",
                **extra,
            }
        }

    def device_settings(self) -> dict[str, Any]:
        """A device config's ``server.nats`` section for this bus."""
        return {
            "url": self.url,
            "nudge_subject": self.nudge_subject,
            "heartbeat_subject": self.heartbeat_subject,
        }

    def publish(self, subject: str, payloads: list[bytes]) -> None:
        """Publish ``payloads`` on ``subject`` and wait until the server has them."""

        async def go() -> None:
            import nats

            nc = await nats.connect(self.url, connect_timeout=5)
            try:
                for data in payloads:
                    await nc.publish(subject, data)
                await nc.flush(timeout=5)
            finally:
                await nc.close()

        asyncio.run(go())

    def delete_streams(self) -> None:
        """Drop this test's stream (if it was created)."""

        async def go() -> None:
            import nats
            from nats.js.errors import NotFoundError

            nc = await nats.connect(self.url, connect_timeout=5)
            try:
                with contextlib.suppress(NotFoundError):
                    await nc.jetstream().delete_stream(self.stream)
            finally:
                await nc.close()

        asyncio.run(go())


@pytest.fixture
def bus(nats_url: str) -> Iterator[Bus]:
    """A fresh subject prefix and stream name on the real NATS server."""
    tag = uuid.uuid4().hex[:10]
    made = Bus(nats_url, f"t{tag}", f"T{tag.upper()}")
    yield made
    made.delete_streams()
