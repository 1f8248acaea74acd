"""One controller tick of one rollout, inside the caller's write transaction.

Reads typed rows through ``_store``, decides with ``policy``, and writes every
state change through the transition tables (``_store.move_*``). The order of
the steps is the one docs/rollouts.md describes under "The controller".
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection

from engine.instruments import instruments
from engine.rollouts import _reads, _store
from engine.rollouts._store import RolloutRow
from engine.rollouts.model import LIVE_ROLLOUT_STATES, DeviceState, RolloutState, Timings
from engine.rollouts.policy import (
    GateOutcome,
    GateView,
    Trip,
    WaveStep,
    choose_offers,
    count_waves,
    gate_soaked_at,
    halts_release,
    judge_device,
    judge_gates,
    judge_performance,
    retry_after,
    rollback_version,
    tripped,
    wave_step,
)
from engine.rollouts.runtime_judge import judge_runtime_device, runtime_devices_to_judge
from engine.rollouts.transitions import DeviceEvent, RolloutEvent, rollout_sources
from engine.rollouts.windows import in_window
from engine.store.schema import rollout_devices
from fleetbase.version import Version
from inventory.models import MaintenanceWindow, OnFailure, RolloutPolicy

__all__ = ["Notice", "TickSettings", "tick_rollout"]

_log = logging.getLogger("engine.rollouts.controller")

#: A rollout state the operator is told about (webhook), with its reason.
Notice = tuple[RolloutState, str]

#: Rollouts whose devices' CPU and memory are compared with their previous release's.
_WATCHED = frozenset({RolloutState.ACTIVE, RolloutState.PAUSED, RolloutState.COMPLETED})
#: Devices are watched at least this long after they took the release, even without soak.
PERFORMANCE_WATCH = timedelta(minutes=5)


@dataclass(frozen=True)
class TickSettings:
    """What a tick needs besides the store: timings and parsers of stored JSON (cached)."""

    timings: Timings
    policy: Callable[[str], RolloutPolicy]
    window: Callable[[str | None], MaintenanceWindow | None]


def tick_rollout(
    conn: Connection,
    rollout_id: int,
    settings: TickSettings,
    now: datetime,
    *,
    failed: list[tuple[str, str]] | None = None,
) -> list[Notice]:
    """Move one live rollout along; the halted, paused and completed states it entered.

    Devices judged failed (or timed out) are appended to ``failed`` as (device, reason).
    """
    r = _store.lock_rollout(conn, rollout_id)
    if r is None or r.state not in LIVE_ROLLOUT_STATES:
        return []
    if r.state is RolloutState.WAITING:
        opened, gate_notices = _check_gates(conn, r, settings, now)
        if not opened:
            return gate_notices
        r = _store.lock_rollout(conn, rollout_id)
        assert r is not None
    timings = settings.timings
    policy = settings.policy(r.policy)
    state = r.state
    runtime = r.component == "runtime"
    if runtime:
        _judge_runtime(conn, r, timings, now, failed)
    else:
        _judge(conn, r, timings, now, failed)
    watch = policy.max_cpu_increase or policy.max_rss_increase
    if state in _WATCHED and watch and not runtime:
        _watch_performance(conn, r, policy, now, failed)
    _store.move_devices(
        conn,
        [rollout_id],
        DeviceEvent.UNOFFER,
        now=now,
        where=[rollout_devices.c.offered_at <= now - timings.offer_ttl],
        offered_at=None,
    )
    notices: list[Notice] = []
    if state is RolloutState.ACTIVE or _soaking(r, policy, now):
        counts = _reads.wave_state_counts(conn, rollout_id, r.resumed_at)
        trip = tripped(count_waves(counts, len(policy.waves)), r.current_wave, policy)
        found = None if trip is None else _reads.regression(conn, rollout_id, trip.wave)
        if trip is not None and found is not None:
            trip = Trip(trip.wave, f"{trip.reason}; {found[0]}: {found[1]}")
        if state is RolloutState.COMPLETED and found is None:
            trip = None  # a completed rollout halts only on a performance failure
        if trip is not None:
            failure = policy.failure
            event = (
                RolloutEvent.PAUSE
                if failure.action is OnFailure.PAUSE and state is RolloutState.ACTIVE
                else RolloutEvent.HALT
            )
            state = _store.move_rollout(conn, rollout_id, state, event, reason=trip.reason, now=now)
            if state is RolloutState.HALTED and not runtime:
                # A runtime that confirmed itself stays: each device already reverts on
                # its own what does not check in (docs/runtime.md).
                _plan_rollbacks(conn, r, now)
            _store.unoffer_devices(conn, rollout_id, now)
            notices.append((state, trip.reason))
            if halts_release(failure, state):
                notices.extend(_halt_release(conn, r, trip.reason, now))
        elif state is RolloutState.ACTIVE:
            rd = rollout_devices
            _store.move_devices(
                conn,
                [rollout_id],
                DeviceEvent.RETRY,
                now=now,
                where=[rd.c.retry_at.is_not(None), rd.c.retry_at <= now],
                retry_at=None,
            )
    open_window = in_window(settings.window(r.maintenance_window), now)
    if state in (RolloutState.ACTIVE, RolloutState.COMPLETED) and open_window:
        last = len(policy.waves) - 1 if state is RolloutState.COMPLETED else r.current_wave
        _offer(conn, r, last_wave=last, policy=policy, timings=timings, now=now)
    if state is RolloutState.ACTIVE and _advance(
        conn, r, policy=policy, timings=timings, now=now, may_offer=open_window
    ):
        reason = "every wave reached its success rate"
        _store.move_rollout(conn, rollout_id, state, RolloutEvent.COMPLETE, reason=reason, now=now)
        notices.append((RolloutState.COMPLETED, reason))
    return notices


# -- rollout.after: waiting for gate rollouts ---------------------------------------------


def _check_gates(
    conn: Connection, r: RolloutRow, settings: TickSettings, now: datetime
) -> tuple[bool, list[Notice]]:
    """Open wave 0 once every gate completed and soaked, halt when one failed, else wait.

    Returns whether wave 0 opened, and what to tell the operator.
    """
    views = [
        GateView(
            g.name,
            g.state,
            g.reason,
            gate_soaked_at(
                g.finished_at, settings.policy(g.policy).soak, _reads.has_attempts(conn, g.id), now
            )
            if g.state is RolloutState.COMPLETED
            else None,
        )
        for g in _reads.gate_rows(conn, r.after_ids)
    ]
    decision = judge_gates(views, now)
    if decision.outcome is GateOutcome.HALT:
        _store.move_rollout(conn, r.id, r.state, RolloutEvent.HALT, reason=decision.reason, now=now)
        return False, [(RolloutState.HALTED, decision.reason)]
    if decision.outcome is GateOutcome.WAIT:
        if decision.reason != r.reason:
            _store.set_rollout(conn, r.id, reason=decision.reason, updated_at=now)
        return False, []
    _store.move_rollout(
        conn,
        r.id,
        r.state,
        RolloutEvent.GATES_PASSED,
        reason=decision.reason,
        now=now,
        current_wave=0,
        wave_opened_at=now,
        wave_met_at=None,
    )
    _log.info("rollout %s: %s", r.name, decision.reason)
    return True, []


# -- judging devices from their reports ---------------------------------------------------


def _judge(
    conn: Connection,
    r: RolloutRow,
    timings: Timings,
    now: datetime,
    failed: list[tuple[str, str]] | None = None,
) -> None:
    """Succeeded, failed or timed out: the outcome of each device that took a plan (the
    failed ones also appended to ``failed``)."""
    target = Version(r.release)
    # Devices with the same outcome move together (most succeed with no reason).
    moves: dict[tuple[DeviceState, DeviceEvent, str | None, datetime | None], list[str]] = {}
    for d in _reads.devices_to_judge(conn, r.id):
        verdict = judge_device(d.seen, target, timings.update_timeout, now)
        if verdict is None:
            continue
        state = d.seen.state
        halted = r.state is RolloutState.HALTED
        if halted and state is DeviceState.IN_PROGRESS and verdict.event is DeviceEvent.SUCCEED:
            _rollback_one(
                conn, r.id, d.device, state, from_version=d.from_version, target=target, now=now
            )
            continue
        reason, retry_at = verdict.reason, None
        if state is DeviceState.IN_PROGRESS and verdict.event is not DeviceEvent.SUCCEED:
            assert reason is not None
            retry_at, reason = retry_after(reason, d.seen.attempts, r.state, timings, now)
        if verdict.event in (DeviceEvent.FAIL, DeviceEvent.TIME_OUT) and failed is not None:
            failed.append((d.device, reason or verdict.event.value))
        moves.setdefault((state, verdict.event, reason, retry_at), []).append(d.device)
    for (state, event, reason, retry_at), devices in moves.items():
        _store.move_listed(
            conn,
            r.id,
            devices,
            state,
            event,
            now=now,
            reason=reason,
            finished_at=now,
            retry_at=retry_at,
        )


def _judge_runtime(
    conn: Connection,
    r: RolloutRow,
    timings: Timings,
    now: datetime,
    failed: list[tuple[str, str]] | None = None,
) -> None:
    """The outcome of each device of a runtime rollout that took its offer."""
    target = Version(r.release)
    for seen in runtime_devices_to_judge(conn, r.id):
        verdict = judge_runtime_device(seen, target, timings.update_timeout, now)
        if verdict is None:
            continue
        reason, retry_at = verdict.reason, None
        if verdict.event is not DeviceEvent.SUCCEED:
            assert reason is not None
            retry_at, reason = retry_after(reason, seen.attempts, r.state, timings, now)
            if failed is not None:
                failed.append((seen.device, reason))
        _store.move_device(
            conn,
            r.id,
            seen.device,
            seen.state,
            verdict.event,
            now=now,
            reason=reason,
            finished_at=now,
            retry_at=retry_at,
        )


def _rollback_one(
    conn: Connection,
    rollout_id: int,
    device: str,
    state: DeviceState,
    *,
    from_version: str | None,
    target: Version,
    now: datetime,
) -> None:
    """Send a device that took ``target`` of a halted rollout back where it came from."""
    back = rollback_version(from_version, target)
    done = {"finished_at": now, "retry_at": None}
    if back is None:
        if state is DeviceState.IN_PROGRESS:  # nothing to go back to: it stays on the release
            _store.move_device(
                conn, rollout_id, device, state, DeviceEvent.SUCCEED, now=now, reason=None, **done
            )
        return
    if not _reads.release_recorded(conn, str(from_version)):
        why = f"no manifest of {from_version} recorded to roll back to"
        _store.move_device(
            conn, rollout_id, device, state, DeviceEvent.NO_ROLLBACK, now=now, reason=why, **done
        )
        return
    _store.move_device(
        conn,
        rollout_id,
        device,
        state,
        DeviceEvent.ROLL_BACK,
        now=now,
        rollback_to=from_version,
        reason=f"took {target}; the rollout halted: back to {from_version}",
        started_at=None,
        retry_at=None,
    )


def _halt_release(conn: Connection, r: RolloutRow, why: str, now: datetime) -> list[Notice]:
    """``rollback: release``: halt every other rollout of the release, gates included, and send
    their devices back too (Argo Rollouts' abort: everything returns to stable)."""
    notices: list[Notice] = []
    reason = f"rollout {r.name} halted with rollback: release ({why})"
    sources = rollout_sources(RolloutEvent.RELEASE_HALTED)
    others = _reads.release_rollout_ids(conn, r.release, sources, exclude=r.id,
                                        component=r.component)  # fmt: skip
    for other_id in others:
        other = _store.lock_rollout(conn, other_id)
        if other is None or other.state not in sources:
            continue
        _store.move_rollout(
            conn, other_id, other.state, RolloutEvent.RELEASE_HALTED, reason=reason, now=now
        )
        if other.component != "runtime":
            _plan_rollbacks(conn, other, now)
        _store.unoffer_devices(conn, other_id, now)
        _log.info("rollout %s: %s", other.name, reason)
        notices.append((RolloutState.HALTED, f"{other.name}: {reason}"))
    return notices


def _plan_rollbacks(conn: Connection, r: RolloutRow, now: datetime) -> None:
    """Every device that took the release (and still runs it) goes back where it came from."""
    target = Version(r.release)
    for device, from_version in _reads.rolled_out_devices(conn, r.id):
        _rollback_one(
            conn,
            r.id,
            device,
            DeviceState.SUCCEEDED,
            from_version=from_version,
            target=target,
            now=now,
        )


def _soaking(r: RolloutRow, policy: RolloutPolicy, now: datetime) -> bool:
    """A completed rollout within its soak: its devices' CPU and memory are still watched,
    and a performance failure that crosses max_failure_rate halts it (a waiting
    ``after`` rollout then halts too)."""
    done = r.finished_at
    return (
        r.state is RolloutState.COMPLETED
        and bool(policy.max_cpu_increase or policy.max_rss_increase)
        and done is not None
        and now < done + policy.soak
    )


# -- performance impact -------------------------------------------------------------------


def _watch_performance(
    conn: Connection,
    r: RolloutRow,
    policy: RolloutPolicy,
    now: datetime,
    failed: list[tuple[str, str]] | None = None,
) -> None:
    """Fail devices whose agent's CPU or memory on the release exceeds the policy's limits
    over their previous release: they go back to it (their check-ins get a rollback plan)
    and count against the failure rate. Watched from taking the release until its soak
    (at least ``PERFORMANCE_WATCH``) ends. Failed devices are appended to ``failed``."""
    since = now - max(policy.soak, PERFORMANCE_WATCH)
    for d in _reads.watched_devices(conn, r.id, r.release, since):
        found = judge_performance(d.before, d.after, policy)
        if found is None:
            continue
        back = d.from_version
        if _reads.release_recorded(conn, back):
            reason = f"{found.reason}; back to {back}"
        else:
            reason = f"{found.reason}; no manifest of {back} recorded to roll back to"
        _store.move_device(
            conn,
            r.id,
            d.device,
            d.state,
            DeviceEvent.REGRESS,
            now=now,
            reason=reason,
            rollback_to=back,
            finished_at=now,
            retry_at=None,
        )
        instruments().performance_failures.labels(r.release, found.resource).inc()
        _log.info("rollout %s: %s failed: %s", r.name, d.device, reason)
        if failed is not None:
            failed.append((d.device, reason))


# -- slots and waves ----------------------------------------------------------------------


def _offer(
    conn: Connection,
    r: RolloutRow,
    *,
    last_wave: int,
    policy: RolloutPolicy,
    timings: Timings,
    now: datetime,
) -> None:
    """Give free ``max_parallel`` slots to online pending devices of waves up to ``last_wave``.

    The devices offered here are the ones the controller nudges (NATS) once the
    tick's transaction has committed (``RolloutController.tick``), never inside it.
    """
    slots = policy.max_parallel - _reads.busy_devices(conn, r.id)
    if slots <= 0:
        return
    candidates = _reads.offer_candidates(
        conn,
        r.id,
        last_wave=last_wave,
        online_since=now - timings.offline_after,
        now=now,
        limit=slots + 100,
        runtime=r.component == "runtime",
        overdue_before=_overdue_before(timings, now),
    )
    chosen = choose_offers(candidates, Version(r.release), slots)
    there = [d for d, event in chosen if event is DeviceEvent.ON_RELEASE]
    offered = [d for d, event in chosen if event is DeviceEvent.OFFER]
    why = "reported the release before it was offered"
    pending = DeviceState.PENDING
    _store.move_listed(
        conn, r.id, there, pending, DeviceEvent.ON_RELEASE, now=now, reason=why, finished_at=now
    )
    _store.move_listed(conn, r.id, offered, pending, DeviceEvent.OFFER, now=now, offered_at=now)
    _store.clear_waiting_reasons(conn, r.id, offered)


def _overdue_before(timings: Timings, now: datetime) -> datetime | None:
    """Devices last seen before this have missed a check-in (None: poll interval unknown).

    A poll and a half: the server's jitter and a device's own spread stay well inside.
    """
    if timings.poll_interval is None:
        return None
    return now - timings.poll_interval * 1.5


def _advance(
    conn: Connection,
    r: RolloutRow,
    *,
    policy: RolloutPolicy,
    timings: Timings,
    now: datetime,
    may_offer: bool,
) -> bool:
    """Open waves whose predecessor met its success rate and soaked; True when complete."""
    current = r.current_wave
    met_at = r.wave_met_at
    while True:
        counts = _reads.wave_state_counts(conn, r.id, r.resumed_at)
        decision = wave_step(count_waves(counts, len(policy.waves)), current, met_at, policy, now)
        if decision.step is WaveStep.BELOW_GOAL:
            if met_at is not None:
                _store.set_rollout(conn, r.id, wave_met_at=None)
            return False
        if met_at is None:
            met_at = now
            _store.set_rollout(conn, r.id, wave_met_at=now, updated_at=now)
        if decision.step is not WaveStep.OPEN_NEXT:
            return decision.step is WaveStep.COMPLETE
        current += 1
        met_at = None
        _store.set_rollout(
            conn, r.id, current_wave=current, wave_opened_at=now, wave_met_at=None, updated_at=now
        )
        _log.info("rollout %s: wave %d opened", r.name, current)
        if may_offer:
            _offer(conn, r, last_wave=current, policy=policy, timings=timings, now=now)
