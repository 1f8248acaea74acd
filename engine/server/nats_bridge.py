"""`engine serve`'s optional NATS link: nudges out, agents' heartbeats in.

One thread in the serving process (the one that runs the rollout controller)
holds one connection (nats-py) and an asyncio loop:

- ``nudge(devices)`` publishes a ``states.nats.Nudge`` on each device's
  subject (core NATS, fire and forget: a lost nudge costs the device one poll
  interval). The controller calls it after committing offers.
- heartbeats: a JetStream durable pull consumer on the agents' heartbeat
  subjects (so heartbeats published while the engine was down are read when it
  comes back) records each one like ``POST /v1/devices/{id}/heartbeat`` —
  for enrolled devices only, and never replacing a newer record.

The link never takes the server down: while NATS is unreachable it logs once
and retries; devices keep polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Connection, select

from engine.server._device_db import DeviceSql, upsert_heartbeat
from engine.store import Store
from engine.store.schema import devices, heartbeats
from fleetbase.aio import attempt_until_stopped
from inventory.models import EngineNatsSettings
from states.nats import BusHeartbeat, Nudge, device_subject
from states.protocol import Heartbeat

__all__ = ["BridgeCounts", "NatsBridge", "heartbeat_wildcard"]

_log = logging.getLogger("engine.nats")

#: Seconds between connection attempts while NATS is unreachable.
RETRY_SECONDS = 2.0
#: Heartbeats fetched (and recorded in one transaction) at a time.
FETCH_BATCH = 500
#: A heartbeat dated further ahead than this is a clock error: ignored, so that it
#: cannot shadow the device's real heartbeats (a newer record is never replaced).
MAX_FUTURE = timedelta(minutes=5)
#: Credential fields of the settings that are paths (relative to the operator repo).
_CREDENTIAL_FILES = ("credentials_file", "nkey_seed_file", "user_password_file", "token_file")


def heartbeat_wildcard(template: str) -> tuple[str, int]:
    """The subscription subject of a heartbeat template and the token index of the device id
    (``fleet.heartbeat.{device}`` → ``fleet.heartbeat.*``, 2)."""
    tokens = template.split(".")
    index = tokens.index("{device}")
    tokens[index] = "*"
    return ".".join(tokens), index


@dataclass
class BridgeCounts:
    """What the link did since it started (for logs, tests and benchmarks)."""

    nudges: int = 0
    heartbeats_recorded: int = 0
    heartbeats_ignored: int = 0


class NatsBridge:
    """The server's NATS connection (``start``/``stop``); ``nudge`` is safe from any thread."""

    def __init__(
        self,
        settings: EngineNatsSettings,
        store: Store,
        *,
        root: Path,
        clock: Callable[[], datetime],
    ) -> None:
        self.settings = _rooted(settings, root)
        self.store = store
        self.clock = clock
        self.counts = BridgeCounts()
        self.connected = threading.Event()
        self.consuming = threading.Event()
        self._sql = DeviceSql(store.engine.dialect.name)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._nc: Any = None
        self._said: set[str] = set()

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Connect (and keep reconnecting) in a background thread; returns at once."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="nats-bridge", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Flush pending nudges, close the connection, end the thread."""
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stopping.set)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def nudge(self, targets: Sequence[str], *, reason: str, rollout: int | None = None) -> None:
        """Ask ``targets`` to check in now (published in the background; dropped while
        NATS is unreachable: those devices find their offer at their next poll)."""
        loop, nc = self._loop, self._nc
        if not targets or loop is None or nc is None or not self.connected.is_set():
            return
        spread = self.settings.nudge_spread.total_seconds()
        payload = Nudge(reason=reason[:200], rollout=rollout, spread=spread)
        body = payload.model_dump_json().encode()
        subjects = [device_subject(self.settings.nudge_subject, d) for d in targets]
        with contextlib.suppress(RuntimeError):  # the loop is closing
            asyncio.run_coroutine_threadsafe(self._publish(nc, subjects, body), loop)

    # -- the thread -------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception:
            _log.exception("NATS link stopped")

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        import nats

        try:
            options = self.settings.connect_options()
        except ValueError as e:
            _log.error("NATS settings in engine.yaml: %s; NATS is off", e)
            return
        while not self._stopping.is_set():
            # nats-py retries the first connection too (max_reconnect_attempts=-1), telling
            # error_cb of each failure: wait for it or for stop, whichever comes first.
            connecting = nats.connect(
                **options,
                name="engine serve",
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=RETRY_SECONDS,
                error_cb=self._on_error,
                disconnected_cb=self._on_disconnect,
                reconnected_cb=self._on_reconnect,
            )
            nc = await attempt_until_stopped(
                connecting, self._stopping, on_failure=self._connect_failed, pause=RETRY_SECONDS
            )
            if nc is None:
                continue
            self._said.discard("connect")
            self._nc = nc
            self.connected.set()
            _log.info("NATS: connected to %s", nc.connected_url.netloc if nc.connected_url else "")
            consumer = None
            if self.settings.heartbeats:
                consumer = asyncio.create_task(self._consume_heartbeats(nc))
            try:
                await self._stopping.wait()
            finally:
                if consumer is not None:
                    consumer.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await consumer
                self.connected.clear()
                self._nc = None
                with contextlib.suppress(Exception):
                    await nc.drain()

    async def _publish(self, nc: Any, subjects: list[str], body: bytes) -> None:
        try:
            for subject in subjects:
                await nc.publish(subject, body)
            await nc.flush(timeout=5)
        except Exception as e:
            self._say("publish", f"NATS: nudges not sent: {e}")
            return
        self.counts.nudges += len(subjects)

    # -- heartbeats ---------------------------------------------------------------------------

    async def _consume_heartbeats(self, nc: Any) -> None:
        """Read heartbeats through the durable consumer until cancelled."""
        from nats.errors import TimeoutError as NatsTimeout
        from nats.js.errors import NotFoundError

        subject, index = heartbeat_wildcard(self.settings.heartbeat_subject)
        js = nc.jetstream()
        while True:
            try:
                try:
                    await js.stream_info(self.settings.stream)
                except NotFoundError:
                    if not self.settings.create_stream:
                        raise
                    await js.add_stream(
                        name=self.settings.stream,
                        subjects=[subject],
                        max_age=self.settings.stream_max_age.total_seconds(),
                    )
                    _log.info("NATS: created stream %s on %s", self.settings.stream, subject)
                sub = await js.pull_subscribe(
                    subject, durable=self.settings.consumer, stream=self.settings.stream
                )
                break
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self._say(
                    "stream",
                    f"NATS: cannot read heartbeats from stream {self.settings.stream} "
                    f"({subject}): {e!r}; retrying",
                )
                await asyncio.sleep(RETRY_SECONDS)
        self._said.discard("stream")
        self.consuming.set()
        _log.info("NATS: recording heartbeats from %s (stream %s)", subject, self.settings.stream)
        while True:
            try:
                msgs = await sub.fetch(FETCH_BATCH, timeout=1.0)
            except (NatsTimeout, TimeoutError):
                continue
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self._say("fetch", f"NATS: reading heartbeats failed: {e!r}; retrying")
                await asyncio.sleep(RETRY_SECONDS)
                continue
            beats = [(_device_of(m.subject, index), m.data) for m in msgs]
            try:
                await asyncio.to_thread(self._record, beats)
            except Exception as e:  # the store is down: leave them unacked, read again
                self._say("store", f"NATS: heartbeats not recorded ({e}); retrying")
                await asyncio.sleep(RETRY_SECONDS)
                continue
            self._said.discard("store")
            for m in msgs:
                with contextlib.suppress(Exception):
                    await m.ack()

    def _record(self, raw: list[tuple[str | None, bytes]]) -> None:
        """Record the newest valid heartbeat of each enrolled device in ``raw``."""
        now = self.clock()
        newest: dict[str, BusHeartbeat] = {}
        for device, data in raw:
            beat = _parse(device, data)
            if beat is None or device is None or beat.at > now + MAX_FUTURE:
                self.counts.heartbeats_ignored += 1
                continue
            seen = newest.get(device)
            if seen is None or beat.at > seen.at:
                newest[device] = beat
        if not newest:
            return
        with self.store.write() as conn:
            known = _enrolled(conn, list(newest))
            recorded = _recorded_at(conn, list(newest))
            for device, beat in newest.items():
                last = recorded.get(device)
                if device not in known or (last is not None and beat.at <= last):
                    self.counts.heartbeats_ignored += 1
                    continue
                upsert_heartbeat(
                    conn,
                    self._sql,
                    device,
                    Heartbeat(version=beat.version, at=beat.at, pid=beat.pid),
                    now,
                )
                self.counts.heartbeats_recorded += 1

    # -- callbacks and logging ---------------------------------------------------------------

    def _connect_failed(self, error: Exception) -> None:
        self._say("connect", f"cannot connect to NATS at {self.settings.url}: {error}")

    async def _on_error(self, error: Exception) -> None:
        if not self.connected.is_set() and self._nc is None:
            self._connect_failed(error)
        else:
            self._say("error", f"NATS: {error!r}")

    async def _on_disconnect(self) -> None:
        self.connected.clear()
        self._say("disconnect", "NATS: disconnected; devices keep polling, reconnecting")

    async def _on_reconnect(self) -> None:
        self.connected.set()
        self._said.discard("disconnect")
        _log.info("NATS: reconnected")

    def _say(self, kind: str, line: str) -> None:
        if kind not in self._said:
            self._said.add(kind)
            _log.warning("%s", line)


def _rooted(settings: EngineNatsSettings, root: Path) -> EngineNatsSettings:
    """``settings`` with relative credential paths taken from the operator repo's root."""
    update: dict[str, Path] = {}
    for name in _CREDENTIAL_FILES:
        path = getattr(settings, name)
        if path is not None and not path.is_absolute():
            update[name] = root / path
    return settings.model_copy(update=update) if update else settings


def _device_of(subject: str, index: int) -> str | None:
    tokens = subject.split(".")
    return tokens[index] if index < len(tokens) else None


def _parse(device: str | None, data: bytes) -> BusHeartbeat | None:
    """The heartbeat in ``data``; None when malformed, dated absurdly, or naming another
    device than its subject."""
    try:
        beat = BusHeartbeat.model_validate_json(data)
    except ValidationError:
        return None
    if beat.at.tzinfo is None or beat.at.utcoffset() is None:
        return None
    if beat.device is not None and beat.device != device:
        return None
    return beat


def _enrolled(conn: Connection, ids: list[str]) -> set[str]:
    rows = conn.execute(
        select(devices.c.device).where(devices.c.device.in_(ids), devices.c.revoked_at.is_(None))
    )
    return {r[0] for r in rows}


def _recorded_at(conn: Connection, ids: list[str]) -> dict[str, datetime]:
    rows = conn.execute(
        select(heartbeats.c.device, heartbeats.c.at).where(heartbeats.c.device.in_(ids))
    )
    return {r[0]: r[1] for r in rows}
