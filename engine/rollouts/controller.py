"""The rollout controller: moves every live rollout along, once per tick, on one replica.

Each tick, when this process holds the leader lock (see ``_lease``), and for
each live rollout in its own short write transaction:

0. waiting rollouts (``rollout.after``): open wave 0 once every gate rollout
   completed and soaked; halt when a gate halted, was aborted or superseded;
   otherwise keep waiting (nothing else happens to them);
1. judge devices that took a plan from their stored report and heartbeat
   (succeeded, failed, timed out; rolled back for rollbacks);
2. give back slots of offers not taken within ``offer_ttl``;
3. active rollouts: halt or pause when an open wave's failure rate crosses
   ``max_failure_rate``; else put failed devices whose backoff elapsed back
   in line;
4. active and completed rollouts, inside the maintenance window: offer
   pending devices of open waves that are online, up to ``max_parallel``;
5. active rollouts: open the next wave once the current one reached
   ``min_success_rate`` and held it for ``soak``; complete after the last.

Webhook events for halted, paused and completed rollouts and for failed
devices are written to the store's outbox in the tick's transaction and sent
from a background thread (``webhook.WebhookOutbox``), retried across
restarts. Nudges (``Nudger``, the server's NATS link) go to the devices the
tick offered a plan or a rollback after the transaction commits, so that they
check in at once instead of at their next poll. docs/rollouts.md has the
rules in full.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Connection, select

from engine.instruments import instruments
from engine.rollouts import _reads
from engine.rollouts._lease import LeaderLock
from engine.rollouts._tick import TickSettings, tick_rollout
from engine.rollouts.errors import LeaseLostError
from engine.rollouts.model import RolloutState, Timings
from engine.rollouts.webhook import WebhookOutbox
from engine.store import Store
from engine.store.schema import rollouts
from fleetbase.clock import utc_now
from inventory.models import MaintenanceWindow, RolloutPolicy

__all__ = ["Nudger", "RolloutController", "TickEvent", "utc_now"]

_log = logging.getLogger("engine.rollouts.controller")


@dataclass(frozen=True)
class TickEvent:
    """Something a tick did that the operator is told about (webhook event)."""

    event: str  # rollout.halted | rollout.paused | rollout.completed | device.failed
    payload: dict[str, Any] = field(default_factory=dict)


class Nudger(Protocol):
    """Tells devices to check in now (the server's NATS link)."""

    def nudge(self, targets: Sequence[str], *, reason: str, rollout: int | None = None) -> None:
        """Ask ``targets`` to check in; must not block."""


class RolloutController:
    """Drives the store's live rollouts; run one per replica, only the leader acts."""

    def __init__(
        self,
        store: Store,
        *,
        clock: Callable[[], datetime] = utc_now,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        tick_seconds: float = 1.0,
        timings: Timings | None = None,
        owner: str | None = None,
        webhook: WebhookOutbox | None = None,
        nudger: Nudger | None = None,
    ) -> None:
        """A controller over ``store``; ``clock`` gives "now" for every rollout decision.

        ``webhook_url``/``webhook_secret`` enable notifications (or pass a ready
        ``webhook`` outbox); its sender thread starts here. ``timings`` default to
        ``Timings.from_env()``.
        ``owner`` names this replica in the SQLite lease (default: host, pid and
        a random suffix). ``nudger`` is told of each tick's offers and rollbacks.
        """
        self.store = store
        self.clock = clock
        self.tick_seconds = tick_seconds
        self.timings = timings or Timings.from_env()
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lock = LeaderLock(store, self.owner, self.timings.lease_ttl)
        if webhook is None and webhook_url:
            webhook = WebhookOutbox(store, webhook_url, webhook_secret)
        self.webhook = webhook
        self.nudger = nudger
        if webhook is not None:
            webhook.start()
        self.events: list[TickEvent] = []  # the last tick's events, for callers and tests
        self._policies: dict[str, RolloutPolicy] = {}
        self._windows: dict[str, MaintenanceWindow] = {}

    @property
    def is_leader(self) -> bool:
        """Whether the last tick held the leader lock."""
        return self.lock.held

    # -- loop ---------------------------------------------------------------------------

    def tick(self) -> None:
        """One pass over every live rollout, when this replica holds the leader lock."""
        self.events = []
        if not self.lock.acquire():
            return
        with instruments().tick_duration.time():
            self._tick_rollouts()

    def _tick_rollouts(self) -> None:
        now = self.clock()
        with self.store.read() as conn:
            ids = _reads.live_rollout_ids(conn)
        settings = TickSettings(self.timings, self._policy, self._window)
        for rollout_id in ids:
            failed: list[tuple[str, str]] = []
            try:
                with self.lock.write() as conn:  # fenced: refused once another replica leads
                    notices = tick_rollout(conn, rollout_id, settings, now, failed=failed)
                    events = [self._event(conn, rollout_id, s, why) for s, why in notices]
                    events += [self._failed(conn, rollout_id, d, why) for d, why in failed]
                    if self.webhook is not None:
                        for event in events:
                            self.webhook.record(conn, event.event, event.payload)
                    nudge = (
                        [] if self.nudger is None else _reads.nudge_targets(conn, rollout_id, now)
                    )
            except LeaseLostError as e:
                _log.warning("tick stopped: %s", e)
                return
            if nudge and self.nudger is not None:
                self.nudger.nudge(nudge, reason="offer", rollout=rollout_id)
            for event in events:
                self.events.append(event)
                _log.info("%s: %s", event.event, event.payload.get("reason") or "")
            if events and self.webhook is not None:
                self.webhook.wake()

    def run(self, stop: threading.Event) -> None:
        """Tick every ``tick_seconds`` until ``stop`` is set; log errors and carry on."""
        try:
            while not stop.is_set():
                try:
                    self.tick()
                except Exception:
                    _log.exception("rollout controller tick failed")
                stop.wait(self.tick_seconds)
        finally:
            self.close()

    def close(self) -> None:
        """Give up the leader lock and stop the webhook sender (pending events stay stored)."""
        self.lock.release()
        if self.webhook is not None:
            self.webhook.close()

    # -- cached parsing and events -----------------------------------------------------

    def _policy(self, text: str) -> RolloutPolicy:
        found = self._policies.get(text)
        if found is None:
            found = self._policies[text] = RolloutPolicy.model_validate(json.loads(text))
        return found

    def _window(self, text: str | None) -> MaintenanceWindow | None:
        if text is None:
            return None
        found = self._windows.get(text)
        if found is None:
            found = self._windows[text] = MaintenanceWindow.model_validate(json.loads(text))
        return found

    def _event(
        self, conn: Connection, rollout_id: int, state: RolloutState, reason: str
    ) -> TickEvent:
        from engine.rollouts.status import rollout_status

        payload: dict[str, Any] = {"reason": reason}
        found = rollout_status(conn, rollout_id=rollout_id, now=self.clock(), timings=self.timings)
        if found:
            payload["rollout"] = found[0].model_dump(mode="json")
        return TickEvent(f"rollout.{state.value}", payload)

    def _failed(self, conn: Connection, rollout_id: int, device: str, reason: str) -> TickEvent:
        r = conn.execute(
            select(
                rollouts.c.name, rollouts.c.group_name, rollouts.c.release, rollouts.c.state
            ).where(rollouts.c.id == rollout_id)
        ).one()
        rollout = {"id": rollout_id, "name": r.name, "group": r.group_name,
                   "release": r.release, "state": r.state}  # fmt: skip
        payload: dict[str, Any] = {"device": device, "reason": reason, "rollout": rollout}
        return TickEvent("device.failed", payload)
