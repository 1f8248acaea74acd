"""The runtime's optional NATS link: nudges that wake the pull loop, and agent heartbeats.

One background thread runs an asyncio loop with one connection (nats-py,
installed with ``pip install 'fleet-rollout[nats]'``). It subscribes to

- the device's nudge subject: a ``Nudge`` sets ``wake`` after a random delay
  of up to ``Nudge.spread`` seconds, so a fleet nudged at once does not check
  in at once;
- the agent's heartbeat subject: the newest ``BusHeartbeat`` is kept for the
  ``nats`` health check kind (``BusHealth``).

The link never fails the runtime: without the library, or while the server is
unreachable, it says so once and keeps retrying; polling goes on regardless.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from agent_runtime.config import DeviceNatsSettings
from agent_runtime.effects import Clock, HealthProbe, HealthResult
from agent_runtime.heartbeat_judge import Source, judge_heartbeat, poll_until_healthy
from fleetbase.aio import attempt_until_stopped
from fleetbase.version import Version
from states.manifest import HealthCheck, HealthCheckKind
from states.nats import BusHeartbeat, Nudge, device_subject

__all__ = ["NO_LINK", "BusHealth", "NatsLink"]

#: Why a ``nats`` health check cannot pass on a device without a NATS section.
NO_LINK = "the nats health check needs a NATS connection: add server.nats to the device config"
#: Seconds between connection attempts while the NATS server is unreachable.
RETRY_SECONDS = 2.0


class NatsLink:
    """One device's NATS connection, in a thread of its own (``start``/``stop``)."""

    def __init__(
        self,
        settings: DeviceNatsSettings,
        device: str,
        *,
        out: Callable[[str], None] = print,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.device = device
        self.out = out
        self.rng = rng or random.Random()
        self.wake = threading.Event()
        self.nudges = 0
        self.connected = threading.Event()
        self._latest: tuple[BusHeartbeat, float] | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._said: set[str] = set()

    @property
    def nudge_subject(self) -> str:
        """This device's nudge subject."""
        return device_subject(self.settings.nudge_subject, self.device)

    @property
    def heartbeat_subject(self) -> str:
        """The subject this device's agent publishes its heartbeat on."""
        return device_subject(self.settings.heartbeat_subject, self.device)

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Connect and subscribe in a background thread (returns at once)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="nats-link", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Close the connection and end the thread."""
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stopping.set)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def wait(self, stop: threading.Event, seconds: float) -> bool:
        """Sleep up to ``seconds``, ending early on a nudge or ``stop``; True when nudged."""
        deadline = time.monotonic() + max(seconds, 0.0)
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            # `stop` is checked at least twice a second; a nudge ends the wait at once.
            if self.wake.wait(min(left, 0.5)):
                self.wake.clear()
                return True
        return False

    def latest_heartbeat(self) -> tuple[BusHeartbeat, float] | None:
        """The newest heartbeat seen on the agent's subject and when it arrived (monotonic)."""
        with self._lock:
            return self._latest

    # -- the thread -------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception as e:  # the link must never take the runtime down
            self._say("crash", f"NATS link stopped: {e}")

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        try:
            import nats
        except ImportError:
            self._say(
                "import",
                "NATS is configured but nats-py is not installed "
                "(pip install 'fleet-rollout[nats]'): polling only",
            )
            return
        try:
            options = self.settings.connect_options()
        except ValueError as e:
            self._say("options", f"NATS settings: {e}: polling only")
            return
        while not self._stopping.is_set():
            # nats-py retries the first connection too (max_reconnect_attempts=-1), telling
            # error_cb of each failure: wait for it or for stop, whichever comes first.
            connecting = nats.connect(
                **options,
                name=f"agent-runtime {self.device}",
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=RETRY_SECONDS,
                error_cb=self._on_error,
            )
            nc = await attempt_until_stopped(
                connecting, self._stopping, on_failure=self._connect_failed, pause=RETRY_SECONDS
            )
            if nc is None:
                continue
            try:
                await nc.subscribe(self.nudge_subject, cb=self._on_nudge)
                await nc.subscribe(self.heartbeat_subject, cb=self._on_heartbeat)
                await nc.flush()
                self.connected.set()
                self._said.discard("connect")
                self.out(f"NATS: listening for nudges on {self.nudge_subject}")
                await self._stopping.wait()
            finally:
                self.connected.clear()
                with contextlib.suppress(Exception):
                    await nc.close()

    def _connect_failed(self, error: Exception) -> None:
        self._say("connect", f"cannot connect to NATS at {self.settings.url}: {error}")

    async def _on_error(self, error: Exception) -> None:
        if not self.connected.is_set():
            self._connect_failed(error)
        else:
            self._say("error", f"NATS: {error}")

    async def _on_nudge(self, msg: Any) -> None:
        try:
            nudge = Nudge.model_validate_json(msg.data)
        except ValidationError:
            nudge = Nudge()
        self.nudges += 1
        delay = self.rng.uniform(0.0, nudge.spread) if nudge.spread > 0 else 0.0
        assert self._loop is not None
        self._loop.call_later(delay, self.wake.set)

    async def _on_heartbeat(self, msg: Any) -> None:
        try:
            beat = BusHeartbeat.model_validate_json(msg.data)
        except ValidationError:
            return
        with self._lock:
            self._latest = (beat, time.monotonic())

    def _say(self, kind: str, line: str) -> None:
        """Say ``line`` once per kind of problem until the link recovers."""
        if kind not in self._said:
            self._said.add(kind)
            self.out(line)


class BusHealth:
    """A ``HealthProbe``: the ``nats`` kind waits for the agent's heartbeat on the bus;
    every other kind goes to ``inner``."""

    def __init__(
        self, inner: HealthProbe, link: NatsLink | None, *, poll_interval: float = 0.1
    ) -> None:
        self.inner = inner
        self.link = link
        self.poll_interval = poll_interval

    def wait_healthy(
        self, check: HealthCheck, expected: Version, since: datetime, clock: Clock
    ) -> HealthResult:
        """Wait until the bus carries a heartbeat of ``expected`` sent after ``since`` and
        within ``max_age``, or ``check.timeout`` passes; the result says what was seen."""
        if check.kind is not HealthCheckKind.NATS:
            return self.inner.wait_healthy(check, expected, since, clock)
        link = self.link
        if link is None:
            return HealthResult(False, NO_LINK)
        return poll_until_healthy(
            check.timeout,
            clock,
            lambda: self._once(link, check, expected, since, clock),
            poll_interval=self.poll_interval,
        )

    def _once(
        self,
        link: NatsLink,
        check: HealthCheck,
        expected: Version,
        since: datetime,
        clock: Clock,
    ) -> HealthResult:
        subject = link.heartbeat_subject
        if not link.connected.is_set():
            return HealthResult(False, f"not connected to NATS ({link.settings.url})")
        seen = link.latest_heartbeat()
        if seen is None:
            return HealthResult(False, f"no heartbeat on {subject}")
        beat, _arrived = seen
        at = beat.at if beat.at.tzinfo is not None else beat.at.replace(tzinfo=UTC)
        bus = Source(heartbeat=f"heartbeat on {subject}", last=f"last heartbeat on {subject}")
        wrong = judge_heartbeat(
            bus, beat.version, at, expected=expected, since=since, now=clock.now(),
            max_age=check.max_age,
        )  # fmt: skip
        if wrong is not None:
            return HealthResult(False, wrong)
        return HealthResult(True, f"heartbeat from {expected} on {subject} at {at.isoformat()}")
