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

Webhooks for halted, paused and completed rollouts are sent after the
transaction commits, from a background thread. docs/rollouts.md has the
rules in full.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, case, func, or_, select, update

from engine.rollouts._lease import LeaderLock
from engine.rollouts.model import (
    FAILED_STATES,
    LIVE_ROLLOUT_STATES,
    NOT_COUNTED_STATES,
    DeviceState,
    RolloutState,
    Timings,
)
from engine.rollouts.offers import FAILURE_RESULTS
from engine.rollouts.ops import unoffer_devices
from engine.rollouts.webhook import WebhookSender
from engine.rollouts.windows import in_window
from engine.store import Store
from engine.store.schema import heartbeats, releases, reports, rollout_devices, rollouts
from fleetbase.clock import utc_now
from fleetbase.version import Version, VersionError
from inventory.models import MaintenanceWindow, OnFailure, RolloutPolicy

__all__ = ["RolloutController", "TickEvent", "utc_now"]

_log = logging.getLogger("engine.rollouts.controller")

#: Transaction results that mean the device runs its target after a good transaction.
_SUCCESS_RESULTS = frozenset({"committed", "noop"})
_LIVE = [s.value for s in LIVE_ROLLOUT_STATES]
_OLD = datetime(1970, 1, 1, tzinfo=UTC)
#: Gate states that mean the gated rollout will never start.
_GATE_FAILED = frozenset(
    {RolloutState.HALTED.value, RolloutState.ABORTED.value, RolloutState.SUPERSEDED.value}
)


@dataclass(frozen=True)
class TickEvent:
    """Something a tick did that the operator is told about (webhook event)."""

    event: str  # rollout.halted | rollout.paused | rollout.completed
    payload: dict[str, Any] = field(default_factory=dict)


def _version(text: str | None) -> Version | None:
    if text is None:
        return None
    try:
        return Version(text)
    except VersionError:
        return None


@dataclass
class _WaveCounts:
    total: int = 0
    succeeded: int = 0
    failed: int = 0  # counted against the failure rate (since the last resume)
    attempted: int = 0
    busy: int = 0  # offered or in progress
    waiting_retry: int = 0

    @property
    def success_rate(self) -> float:
        return 1.0 if self.total == 0 else self.succeeded / self.total

    @property
    def failure_rate(self) -> float:
        return 0.0 if self.total == 0 else self.failed / self.total


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
        webhook: WebhookSender | None = None,
    ) -> None:
        """A controller over ``store``; ``clock`` gives "now" for every rollout decision.

        ``webhook_url``/``webhook_secret`` enable notifications (or pass a ready
        ``webhook`` sender). ``timings`` default to ``Timings.from_env()``.
        ``owner`` names this replica in the SQLite lease (default: host, pid and
        a random suffix).
        """
        self.store = store
        self.clock = clock
        self.tick_seconds = tick_seconds
        self.timings = timings or Timings.from_env()
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lock = LeaderLock(store, self.owner, self.timings.lease_ttl)
        if webhook is None and webhook_url:
            webhook = WebhookSender(webhook_url, webhook_secret)
        self.webhook = webhook
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
        now = self.clock()
        with self.store.read() as conn:
            ids = [
                int(i)
                for (i,) in conn.execute(
                    select(rollouts.c.id).where(rollouts.c.state.in_(_LIVE)).order_by(rollouts.c.id)
                )
            ]
        for rollout_id in ids:
            with self.store.write() as conn:
                events = self._tick_rollout(conn, rollout_id, now)
            for event in events:
                self.events.append(event)
                _log.info("%s: %s", event.event, event.payload.get("reason") or "")
                if self.webhook is not None:
                    self.webhook.send(event.event, event.payload)

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
        """Give up the leader lock and flush pending webhooks."""
        self.lock.release()
        if self.webhook is not None:
            self.webhook.close()

    # -- one rollout --------------------------------------------------------------------

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

    def _tick_rollout(self, conn: Connection, rollout_id: int, now: datetime) -> list[TickEvent]:
        r = conn.execute(
            select(rollouts).where(rollouts.c.id == rollout_id).with_for_update()
        ).first()
        if r is None or r.state not in _LIVE:
            return []
        if r.state == RolloutState.WAITING.value:
            opened, gate_events = self._check_gates(conn, r, now)
            if not opened:
                return gate_events
            r = conn.execute(select(rollouts).where(rollouts.c.id == rollout_id)).one()
        policy = self._policy(r.policy)
        window = self._window(r.maintenance_window)
        state = RolloutState(r.state)
        self._judge(conn, r, state, now)
        self._expire_offers(conn, rollout_id, now)
        events: list[TickEvent] = []
        waves = self._counts(conn, rollout_id, len(policy.waves), r.resumed_at)
        if state is RolloutState.ACTIVE:
            tripped = self._tripped(waves, r.current_wave, policy)
            if tripped is not None:
                wave, counts = tripped
                reason = (
                    f"wave {wave}: {counts.failed} of {counts.total} devices failed "
                    f"({counts.failure_rate:.0%}), above max_failure_rate "
                    f"{policy.max_failure_rate:.0%}"
                )
                if policy.on_failure is OnFailure.PAUSE:
                    state = RolloutState.PAUSED
                    self._set_state(conn, rollout_id, state, reason, now)
                else:
                    state = RolloutState.HALTED
                    self._set_state(conn, rollout_id, state, reason, now)
                    self._plan_rollbacks(conn, r, now)
                unoffer_devices(conn, rollout_id, now)
                events.append(self._event(conn, rollout_id, state, reason))
            else:
                self._retry_due(conn, rollout_id, now)
        open_window = in_window(window, now)
        if state in (RolloutState.ACTIVE, RolloutState.COMPLETED) and open_window:
            self._offer(conn, r, policy, now)
        if state is RolloutState.ACTIVE:
            done = self._advance(conn, r, policy, now, may_offer=open_window)
            if done:
                reason = "every wave reached its success rate"
                self._set_state(conn, rollout_id, RolloutState.COMPLETED, reason, now)
                events.append(self._event(conn, rollout_id, RolloutState.COMPLETED, reason))
        return events

    # -- rollout.after: waiting for gate rollouts ---------------------------------------

    def _check_gates(self, conn: Connection, r: Any, now: datetime) -> tuple[bool, list[TickEvent]]:
        """Open wave 0 of a waiting rollout once every gate completed and soaked.

        A gate that halted, was aborted or superseded halts this rollout (it
        never started: nothing to roll back); a paused or running gate keeps it
        waiting. Returns whether wave 0 opened, and the events to send.
        """
        ids = [int(i) for i in json.loads(r.after_ids or "[]")]
        gates = {
            int(g.id): g
            for g in conn.execute(
                select(
                    rollouts.c.id,
                    rollouts.c.name,
                    rollouts.c.state,
                    rollouts.c.reason,
                    rollouts.c.policy,
                    rollouts.c.finished_at,
                ).where(rollouts.c.id.in_(ids))
            )
        }
        found = [gates[i] for i in ids if i in gates]  # a gate row never goes away
        for g in found:
            if g.state in _GATE_FAILED:
                reason = f"{g.name} {g.state}: {g.reason or 'no reason recorded'}"
                self._set_state(conn, r.id, RolloutState.HALTED, reason, now)
                return False, [self._event(conn, r.id, RolloutState.HALTED, reason)]
        waiting: list[str] = []
        for g in found:
            if g.state == RolloutState.PAUSED.value:
                waiting.append(f"{g.name} (paused: {g.reason or 'no reason recorded'})")
            elif g.state != RolloutState.COMPLETED.value:
                waiting.append(g.name)
            else:
                until = self._soaked_at(conn, g, now)
                if until is not None and now < until:
                    waiting.append(f"{g.name} to soak until {until.strftime('%Y-%m-%dT%H:%M:%SZ')}")
        if waiting:
            reason = "waiting for " + ", ".join(waiting)
            if reason != r.reason:
                conn.execute(
                    update(rollouts)
                    .where(rollouts.c.id == r.id)
                    .values(reason=reason, updated_at=now)
                )
            return False, []
        names = ", ".join(g.name for g in found) or "the gate rollouts"
        conn.execute(
            update(rollouts)
            .where(rollouts.c.id == r.id)
            .values(
                state=RolloutState.ACTIVE.value,
                reason=f"{names} completed; wave 0 opened",
                current_wave=0,
                wave_opened_at=now,
                wave_met_at=None,
                updated_at=now,
            )
        )
        _log.info("rollout %s: %s completed, wave 0 opened", r.name, names)
        return True, []

    def _soaked_at(self, conn: Connection, gate: Any, now: datetime) -> datetime | None:
        """When a completed gate has soaked: its own ``soak`` after it completed.

        None when no device of the gate needed a change (nothing to soak), like
        a wave whose devices all ran the release already.
        """
        attempted = conn.execute(
            select(rollout_devices.c.device)
            .where(rollout_devices.c.rollout_id == gate.id, rollout_devices.c.attempts > 0)
            .limit(1)
        ).first()
        if attempted is None:
            return None
        return (gate.finished_at or now) + self._policy(gate.policy).soak

    def _set_state(
        self, conn: Connection, rollout_id: int, state: RolloutState, reason: str, now: datetime
    ) -> None:
        finished = state in (RolloutState.HALTED, RolloutState.COMPLETED)
        values: dict[str, Any] = {"state": state.value, "reason": reason, "updated_at": now}
        if finished:
            values["finished_at"] = now
        if state is RolloutState.COMPLETED:
            values["completed_at"] = now
        conn.execute(update(rollouts).where(rollouts.c.id == rollout_id).values(**values))

    def _event(
        self, conn: Connection, rollout_id: int, state: RolloutState, reason: str
    ) -> TickEvent:
        from engine.rollouts.status import rollout_status

        payload: dict[str, Any] = {"reason": reason}
        found = rollout_status(conn, rollout_id=rollout_id, now=self.clock(), timings=self.timings)
        if found:
            payload["rollout"] = found[0].model_dump(mode="json")
        return TickEvent(f"rollout.{state.value}", payload)

    # -- judging devices from their reports ---------------------------------------------

    def _judge(self, conn: Connection, r: Any, state: RolloutState, now: datetime) -> None:
        rd = rollout_devices
        rows = conn.execute(
            select(
                rd.c.device,
                rd.c.state,
                rd.c.started_at,
                rd.c.attempts,
                rd.c.from_version,
                rd.c.rollback_to,
                reports.c.agent_version,
                reports.c.last_result,
                reports.c.last_seen,
                reports.c.agent_running,
                heartbeats.c.version.label("hb_version"),
                heartbeats.c.received_at.label("hb_at"),
            )
            .select_from(
                rd.outerjoin(reports, reports.c.device == rd.c.device).outerjoin(
                    heartbeats, heartbeats.c.device == rd.c.device
                )
            )
            .where(
                rd.c.rollout_id == r.id,
                rd.c.state.in_([DeviceState.IN_PROGRESS.value, DeviceState.ROLLING_BACK.value]),
            )
        ).all()
        target = Version(r.release)
        timings = self.timings
        for row in rows:
            started = row.started_at or _OLD
            seen_after = row.last_seen is not None and row.last_seen > started
            running = _version(row.agent_version)
            failed_report = seen_after and row.last_result in FAILURE_RESULTS
            timed_out = started + timings.update_timeout <= now
            if row.state == DeviceState.ROLLING_BACK.value:
                back = _version(row.rollback_to)
                if seen_after and running is not None and running == back:
                    self._move(
                        conn, r.id, row.device, to=DeviceState.ROLLED_BACK, reason=None, now=now
                    )
                elif (failed_report and running != back) or timed_out:
                    why = (
                        f"rollback to {back} reported {row.last_result}"
                        if failed_report
                        else f"no report of {back} within {timings.update_timeout}"
                    )
                    self._move(
                        conn, r.id, row.device, to=DeviceState.ROLLBACK_FAILED, reason=why, now=now
                    )
                continue
            healthy = (
                row.hb_version is not None
                and _version(row.hb_version) == target
                and row.hb_at is not None
                and row.hb_at > started
            ) or (seen_after and row.agent_running is True)
            on_target = running is not None and running == target
            if on_target and row.last_result in _SUCCESS_RESULTS and healthy:
                if state is RolloutState.HALTED:
                    self._rollback_one(
                        conn,
                        r.id,
                        row.device,
                        from_version=row.from_version,
                        target=target,
                        now=now,
                    )
                else:
                    self._move(
                        conn, r.id, row.device, to=DeviceState.SUCCEEDED, reason=None, now=now
                    )
            elif failed_report and not on_target:
                why = f"attempt {row.attempts}: the device reported {row.last_result}"
                self._fail(conn, r.id, row, to=DeviceState.FAILED, reason=why, state=state, now=now)
            elif timed_out:
                why = (
                    f"attempt {row.attempts}: no outcome within {timings.update_timeout} "
                    "of taking the plan"
                )
                self._fail(
                    conn, r.id, row, to=DeviceState.TIMED_OUT, reason=why, state=state, now=now
                )

    def _move(
        self,
        conn: Connection,
        rollout_id: int,
        device: str,
        *,
        to: DeviceState,
        reason: str | None,
        now: datetime,
    ) -> None:
        conn.execute(
            update(rollout_devices)
            .where(rollout_devices.c.rollout_id == rollout_id, rollout_devices.c.device == device)
            .values(state=to.value, reason=reason, finished_at=now, retry_at=None, updated_at=now)
        )

    def _fail(
        self,
        conn: Connection,
        rollout_id: int,
        row: Any,
        *,
        to: DeviceState,
        reason: str,
        state: RolloutState,
        now: datetime,
    ) -> None:
        retry_at = None
        if state is RolloutState.ACTIVE and row.attempts < self.timings.max_attempts:
            retry_at = now + self.timings.retry_delay(row.attempts)
            reason += f"; retry at {retry_at.strftime('%Y-%m-%dT%H:%M:%SZ')}"
        else:
            reason += "; no retries left" if state is RolloutState.ACTIVE else ""
        conn.execute(
            update(rollout_devices)
            .where(
                rollout_devices.c.rollout_id == rollout_id,
                rollout_devices.c.device == row.device,
            )
            .values(
                state=to.value, reason=reason, finished_at=now, retry_at=retry_at, updated_at=now
            )
        )

    def _rollback_one(
        self,
        conn: Connection,
        rollout_id: int,
        device: str,
        *,
        from_version: str | None,
        target: Version,
        now: datetime,
    ) -> None:
        back = _version(from_version)
        if back is None or back == target:
            self._move(conn, rollout_id, device, to=DeviceState.SUCCEEDED, reason=None, now=now)
            return
        recorded = conn.execute(
            select(releases.c.version).where(releases.c.version == str(from_version))
        ).first()
        if recorded is None:
            why = f"no manifest of {from_version} recorded to roll back to"
            self._move(
                conn, rollout_id, device, to=DeviceState.ROLLBACK_FAILED, reason=why, now=now
            )
            return
        conn.execute(
            update(rollout_devices)
            .where(rollout_devices.c.rollout_id == rollout_id, rollout_devices.c.device == device)
            .values(
                state=DeviceState.ROLLBACK.value,
                rollback_to=from_version,
                reason=f"took {target}; the rollout halted: back to {from_version}",
                started_at=None,
                retry_at=None,
                updated_at=now,
            )
        )

    def _plan_rollbacks(self, conn: Connection, r: Any, now: datetime) -> None:
        """Every device that took the release (and still runs it) goes back where it came from."""
        target = Version(r.release)
        rows = conn.execute(
            select(rollout_devices.c.device, rollout_devices.c.from_version).where(
                rollout_devices.c.rollout_id == r.id,
                rollout_devices.c.state == DeviceState.SUCCEEDED.value,
                rollout_devices.c.attempts > 0,
            )
        ).all()
        for device, from_version in rows:
            self._rollback_one(
                conn, r.id, device, from_version=from_version, target=target, now=now
            )

    # -- slots, retries, waves ----------------------------------------------------------

    def _expire_offers(self, conn: Connection, rollout_id: int, now: datetime) -> None:
        conn.execute(
            update(rollout_devices)
            .where(
                rollout_devices.c.rollout_id == rollout_id,
                rollout_devices.c.state == DeviceState.OFFERED.value,
                rollout_devices.c.offered_at <= now - self.timings.offer_ttl,
            )
            .values(state=DeviceState.PENDING.value, offered_at=None, updated_at=now)
        )

    def _retry_due(self, conn: Connection, rollout_id: int, now: datetime) -> None:
        conn.execute(
            update(rollout_devices)
            .where(
                rollout_devices.c.rollout_id == rollout_id,
                rollout_devices.c.state.in_([s.value for s in FAILED_STATES]),
                rollout_devices.c.retry_at.is_not(None),
                rollout_devices.c.retry_at <= now,
            )
            .values(state=DeviceState.PENDING.value, retry_at=None, updated_at=now)
        )

    def _counts(
        self, conn: Connection, rollout_id: int, n_waves: int, resumed_at: datetime | None
    ) -> list[_WaveCounts]:
        rd = rollout_devices
        since = resumed_at or _OLD
        finished = rd.c.finished_at
        rows = conn.execute(
            select(
                rd.c.wave,
                rd.c.state,
                func.count(),
                func.sum(case((rd.c.attempts > 0, 1), else_=0)),
                func.sum(case((and_(finished.is_not(None), finished > since), 1), else_=0)),
                func.sum(case((rd.c.retry_at.is_not(None), 1), else_=0)),
            )
            .where(rd.c.rollout_id == rollout_id)
            .group_by(rd.c.wave, rd.c.state)
        ).all()
        waves = [_WaveCounts() for _ in range(n_waves)]
        not_counted = {s.value for s in NOT_COUNTED_STATES}
        failed_states = {s.value for s in FAILED_STATES}
        busy = {DeviceState.OFFERED.value, DeviceState.IN_PROGRESS.value}
        for wave, state, count, attempted, after_resume, retrying in rows:
            if wave >= n_waves or state in not_counted:
                continue
            c = waves[wave]
            c.total += count
            c.attempted += int(attempted or 0)
            if state == DeviceState.SUCCEEDED.value:
                c.succeeded += count
            elif state in failed_states:
                c.failed += int(after_resume or 0)
                c.waiting_retry += int(retrying or 0)
            elif state in busy:
                c.busy += count
        return waves

    def _tripped(
        self, waves: list[_WaveCounts], current: int, policy: RolloutPolicy
    ) -> tuple[int, _WaveCounts] | None:
        for index, counts in enumerate(waves[: current + 1]):
            if counts.failed and counts.failure_rate > policy.max_failure_rate:
                return index, counts
        return None

    def _offer(self, conn: Connection, r: Any, policy: RolloutPolicy, now: datetime) -> None:
        """Give free ``max_parallel`` slots to online pending devices of open waves, in order."""
        rd = rollout_devices
        busy = conn.execute(
            select(func.count()).where(
                rd.c.rollout_id == r.id,
                rd.c.state.in_([DeviceState.OFFERED.value, DeviceState.IN_PROGRESS.value]),
            )
        ).scalar_one()
        slots = policy.max_parallel - int(busy)
        if slots <= 0:
            return
        current_wave = r.current_wave
        if r.state == RolloutState.COMPLETED.value:
            current_wave = len(policy.waves) - 1
        online_since = now - self.timings.offline_after
        target = Version(r.release)
        candidates = conn.execute(
            select(rd.c.device, reports.c.agent_version, reports.c.runtime_version)
            .select_from(rd.join(reports, reports.c.device == rd.c.device))
            .where(
                rd.c.rollout_id == r.id,
                rd.c.state == DeviceState.PENDING.value,
                rd.c.wave <= current_wave,
                or_(rd.c.retry_at.is_(None), rd.c.retry_at <= now),
                reports.c.last_seen >= online_since,
            )
            .order_by(rd.c.wave, rd.c.position)
            .limit(slots + 100)
        ).all()
        for device, agent_version, runtime_version in candidates:
            running = _version(agent_version)
            # Only a runtime's report counts; a report from elsewhere (no runtime version)
            # waits for the runtime to adopt the files and report its first result.
            if running is not None and running == target and runtime_version is not None:
                conn.execute(
                    update(rd)
                    .where(rd.c.rollout_id == r.id, rd.c.device == device)
                    .values(
                        state=DeviceState.SUCCEEDED.value,
                        reason="reported the release before it was offered",
                        finished_at=now,
                        updated_at=now,
                    )
                )
                continue
            if slots <= 0:
                break
            conn.execute(
                update(rd)
                .where(
                    rd.c.rollout_id == r.id,
                    rd.c.device == device,
                    rd.c.state == DeviceState.PENDING.value,
                )
                .values(state=DeviceState.OFFERED.value, offered_at=now, updated_at=now)
            )
            slots -= 1

    def _advance(
        self, conn: Connection, r: Any, policy: RolloutPolicy, now: datetime, *, may_offer: bool
    ) -> bool:
        """Open waves whose predecessor met its success rate and soaked; True when complete."""
        current = int(r.current_wave)
        met_at: datetime | None = r.wave_met_at
        last = len(policy.waves) - 1
        while True:
            waves = self._counts(conn, r.id, len(policy.waves), r.resumed_at)
            counts = waves[current]
            if counts.success_rate < policy.min_success_rate:
                if met_at is not None:
                    conn.execute(
                        update(rollouts).where(rollouts.c.id == r.id).values(wave_met_at=None)
                    )
                return False
            if met_at is None:
                met_at = now
                conn.execute(
                    update(rollouts)
                    .where(rollouts.c.id == r.id)
                    .values(wave_met_at=now, updated_at=now)
                )
            if current == last:
                busy = sum(w.busy + w.waiting_retry for w in waves)
                return busy == 0
            soak = policy.soak if counts.attempted else timedelta(0)
            if now < met_at + soak:
                return False
            current += 1
            met_at = None
            conn.execute(
                update(rollouts)
                .where(rollouts.c.id == r.id)
                .values(current_wave=current, wave_opened_at=now, wave_met_at=None, updated_at=now)
            )
            _log.info("rollout %s: wave %d opened", r.name, current)
            if may_offer:
                self._offer(conn, _Row(r, current_wave=current), policy, now)


class _Row:
    """A rollout row with some fields replaced (rows are immutable)."""

    def __init__(self, row: Any, **changes: Any) -> None:
        self._row = row
        self._changes = changes

    def __getattr__(self, name: str) -> Any:
        if name in self._changes:
            return self._changes[name]
        return getattr(self._row, name)
