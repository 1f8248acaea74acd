"""Pull mode's background threads: step events in batches, the agent's heartbeat forwarded."""

from __future__ import annotations

import contextlib
import json
import threading
from collections import deque
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from pydantic import ValidationError

from agent_runtime.errors import (
    ServerError,
    ServerProtocolError,
)
from agent_runtime.server_client import ServerClient
from fleetbase.version import Version, VersionError
from states.protocol import Heartbeat, StepEvent

__all__ = ["EventSender", "HeartbeatForwarder", "read_agent_heartbeat"]

#: Events kept while the server cannot take them; older ones are dropped beyond this.
MAX_QUEUED_EVENTS = 1000
#: The protocol's batch limit (``EventBatch.events``).
BATCH = 100


# -- background senders ---------------------------------------------------------------------


class _Periodic:
    """A daemon thread calling ``tick`` every ``interval`` seconds until stopped."""

    def __init__(self, name: str, interval: float) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and wait for it (bounded)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):  # a sender never takes the runtime down
                self.tick()

    def tick(self) -> None:
        """One round of work."""
        raise NotImplementedError


class EventSender(_Periodic):
    """Queues step events and posts them in batches; best-effort, never raises."""

    def __init__(
        self,
        client: ServerClient,
        token: Callable[[], str | None],
        *,
        interval: float = 0.5,
        out: Callable[[str], None] = print,
    ) -> None:
        super().__init__("step-events", interval)
        self.client = client
        self.token = token
        self.out = out
        self._queue: deque[StepEvent] = deque(maxlen=MAX_QUEUED_EVENTS)
        self._lock = threading.Lock()
        self._failing = False
        self.sent = 0

    def add(self, event: StepEvent) -> None:
        """Queue one event (the oldest is dropped when the queue is full)."""
        with self._lock:
            self._queue.append(event)

    def pending(self) -> int:
        """Events not yet accepted by the server."""
        with self._lock:
            return len(self._queue)

    def tick(self) -> None:
        """Send what is queued."""
        self.flush()

    def flush(self) -> bool:
        """Send queued events in batches; True when the queue is empty afterwards."""
        with self._lock:
            while self._queue:
                token = self.token()
                if token is None:
                    return False
                batch = list(self._queue)[:BATCH]
                self.client.token = token
                try:
                    self.client.post_events(batch)
                except ServerProtocolError as e:
                    # the server refuses this batch as malformed: resending cannot help
                    self.out(f"step events dropped: {e}")
                except ServerError as e:
                    if not self._failing:
                        self.out(f"step events kept for later: {e}")
                    self._failing = True
                    return False
                else:
                    self.sent += len(batch)
                for _ in batch:
                    self._queue.popleft()
                self._failing = False
            return True


def read_agent_heartbeat(path: Path) -> Heartbeat | None:
    """The agent's heartbeat file as a protocol ``Heartbeat``; None when missing or malformed."""
    try:
        data = json.loads(path.read_bytes())
        if not isinstance(data, dict):
            return None
        pid = data.get("pid")
        return Heartbeat(
            version=Version.parse(str(data["version"])),
            at=datetime.fromisoformat(str(data["time"])),
            pid=pid if isinstance(pid, int) else None,
        )
    except (OSError, ValueError, KeyError, VersionError, ValidationError):
        return None


class HeartbeatForwarder(_Periodic):
    """Posts the agent's newest heartbeat to the server whenever it changed."""

    def __init__(
        self,
        client: ServerClient,
        token: Callable[[], str | None],
        paths: Callable[[], list[Path]],
        *,
        interval: float,
    ) -> None:
        super().__init__("heartbeat-forwarder", interval)
        self.client = client
        self.token = token
        self.paths = paths
        self._lock = threading.Lock()
        self.last_sent: Heartbeat | None = None

    def tick(self) -> None:
        """Forward now if there is a newer heartbeat."""
        self.forward()

    def forward(self) -> Heartbeat | None:
        """Post the newest heartbeat if it is newer than the last one posted; what was posted."""
        with self._lock:
            token = self.token()
            if token is None:
                return None
            beats = [b for b in (read_agent_heartbeat(p) for p in self.paths()) if b is not None]
            beats = [b for b in beats if b.at.tzinfo is not None]
            if not beats:
                return None
            newest = max(beats, key=lambda b: b.at)
            if self.last_sent is not None and newest.at <= self.last_sent.at:
                return None
            self.client.token = token
            try:
                self.client.post_heartbeat(newest)
            except ServerError:
                return None
            self.last_sent = newest
            return newest
