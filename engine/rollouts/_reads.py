"""Typed reads of the rollout tables for the controller (no writes here; see ``_store``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, and_, case, func, or_, select

from engine.requires import runtime_satisfies
from engine.rollouts.model import LIVE_ROLLOUT_STATES, DeviceState, RolloutState
from engine.rollouts.policy import DeviceObservation, Usage, WaveStateCount
from engine.store.schema import (
    heartbeats,
    performance,
    releases,
    reports,
    rollout_devices,
    rollouts,
)

__all__ = [
    "GateRow",
    "JudgedDevice",
    "WatchedDevice",
    "busy_devices",
    "devices_to_judge",
    "gate_rows",
    "has_attempts",
    "live_rollout_ids",
    "nudge_targets",
    "offer_candidates",
    "regression",
    "release_recorded",
    "rolled_out_devices",
    "watched_devices",
    "wave_state_counts",
]

_LIVE = [s.value for s in LIVE_ROLLOUT_STATES]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class GateRow:
    """A gate rollout of a waiting one: what deciding on the gate needs."""

    id: int
    name: str
    state: RolloutState
    reason: str | None
    policy: str
    finished_at: datetime | None


@dataclass(frozen=True)
class JudgedDevice:
    """A device that took a plan, with what its report and heartbeat show."""

    device: str
    from_version: str | None
    seen: DeviceObservation


def live_rollout_ids(conn: Connection) -> list[int]:
    """Ids of the rollouts the controller still looks at, oldest first."""
    query = select(rollouts.c.id).where(rollouts.c.state.in_(_LIVE)).order_by(rollouts.c.id)
    return [int(i) for (i,) in conn.execute(query)]


def release_rollout_ids(
    conn: Connection,
    release: str,
    states: Sequence[RolloutState],
    exclude: int,
    component: str = "agent",
) -> list[int]:
    """The rollouts of ``release`` (of ``component``) in ``states``, ``exclude`` left out,
    oldest first."""
    rows = conn.execute(
        select(rollouts.c.id)
        .where(
            rollouts.c.release == release,
            rollouts.c.component == component,
            rollouts.c.state.in_([s.value for s in states]),
            rollouts.c.id != exclude,
        )
        .order_by(rollouts.c.id)
    )
    return [int(r[0]) for r in rows]


def gate_rows(conn: Connection, ids: Sequence[int]) -> list[GateRow]:
    """The gate rollouts ``ids`` in that order (a gate row never goes away)."""
    rows = conn.execute(
        select(
            rollouts.c.id,
            rollouts.c.name,
            rollouts.c.state,
            rollouts.c.reason,
            rollouts.c.policy,
            rollouts.c.finished_at,
        ).where(rollouts.c.id.in_(ids))
    )
    by_id = {
        int(g.id): GateRow(
            int(g.id), g.name, RolloutState(g.state), g.reason, g.policy, g.finished_at
        )
        for g in rows
    }
    return [by_id[i] for i in ids if i in by_id]


def has_attempts(conn: Connection, rollout_id: int) -> bool:
    """Whether any device of the rollout took a plan (needed a change)."""
    found = conn.execute(
        select(rollout_devices.c.device)
        .where(rollout_devices.c.rollout_id == rollout_id, rollout_devices.c.attempts > 0)
        .limit(1)
    ).first()
    return found is not None


def release_recorded(conn: Connection, version: str) -> bool:
    """Whether ``version``'s manifest is in the store (so devices can be sent to it)."""
    found = conn.execute(select(releases.c.version).where(releases.c.version == version))
    return found.first() is not None


def devices_to_judge(conn: Connection, rollout_id: int) -> list[JudgedDevice]:
    """Devices updating or rolling back, with their stored report and heartbeat."""
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
            reports.c.config_digest.label("reported_config"),
            rd.c.config_digest.label("target_config"),
            heartbeats.c.version.label("hb_version"),
            heartbeats.c.received_at.label("hb_at"),
        )
        .select_from(
            rd.outerjoin(reports, reports.c.device == rd.c.device).outerjoin(
                heartbeats, heartbeats.c.device == rd.c.device
            )
        )
        .where(
            rd.c.rollout_id == rollout_id,
            rd.c.state.in_([DeviceState.IN_PROGRESS.value, DeviceState.ROLLING_BACK.value]),
        )
    )
    return [
        JudgedDevice(
            device=row.device,
            from_version=row.from_version,
            seen=DeviceObservation(
                state=DeviceState(row.state),
                started_at=row.started_at,
                attempts=int(row.attempts),
                rollback_to=row.rollback_to,
                agent_version=row.agent_version,
                last_result=row.last_result,
                last_seen=row.last_seen,
                agent_running=row.agent_running,
                heartbeat_version=row.hb_version,
                heartbeat_at=row.hb_at,
                config_digest=row.reported_config,
                target_config=row.target_config,
            ),
        )
        for row in rows
    ]


def rolled_out_devices(conn: Connection, rollout_id: int) -> list[tuple[str, str | None]]:
    """(device, from_version) of devices that took the release and succeeded."""
    rows = conn.execute(
        select(rollout_devices.c.device, rollout_devices.c.from_version).where(
            rollout_devices.c.rollout_id == rollout_id,
            rollout_devices.c.state == DeviceState.SUCCEEDED.value,
            rollout_devices.c.attempts > 0,
        )
    )
    return [(str(d), v) for d, v in rows]


def wave_state_counts(
    conn: Connection, rollout_id: int, resumed_at: datetime | None
) -> list[WaveStateCount]:
    """The rollout's devices counted per (wave, state); failures only after ``resumed_at``."""
    rd = rollout_devices
    finished = rd.c.finished_at
    since = resumed_at or _EPOCH
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
    )
    return [
        WaveStateCount(
            int(wave),
            DeviceState(state),
            int(count),
            int(attempted or 0),
            int(after or 0),
            int(retrying or 0),
        )
        for wave, state, count, attempted, after, retrying in rows
    ]


def nudge_targets(conn: Connection, rollout_id: int, now: datetime) -> list[str]:
    """Devices of the rollout given an offer or a rollback at ``now`` (by this tick)."""
    rd = rollout_devices
    waiting = (DeviceState.OFFERED.value, DeviceState.ROLLBACK.value)
    rows = conn.execute(
        select(rd.c.device).where(
            rd.c.rollout_id == rollout_id, rd.c.updated_at == now, rd.c.state.in_(waiting)
        )
    )
    return [r[0] for r in rows]


def busy_devices(conn: Connection, rollout_id: int) -> int:
    """How many devices of the rollout hold a slot (offered or in progress)."""
    rd = rollout_devices
    found = conn.execute(
        select(func.count()).where(
            rd.c.rollout_id == rollout_id,
            rd.c.state.in_([DeviceState.OFFERED.value, DeviceState.IN_PROGRESS.value]),
        )
    ).scalar_one()
    return int(found)


#: How many pending devices, per device to offer, the due-order search sorts (see
#: ``offer_candidates``), and at least: with more pending, the chosen ones are due to
#: check in within the first twentieth of a poll interval rather than the very soonest.
OFFER_SAMPLE_FACTOR = 20
OFFER_SAMPLE_MIN = 10_000


def offer_candidates(
    conn: Connection,
    rollout_id: int,
    *,
    last_wave: int,
    online_since: datetime,
    now: datetime,
    limit: int,
    runtime: bool = False,
    overdue_before: datetime | None = None,
    sample: int | None = None,
) -> list[tuple[str, str | None]]:
    """(device, reported version) of pending online devices of waves up to ``last_wave``.

    In wave order, then stable position; with ``overdue_before``, in wave order, then
    the order the devices are due to check in (last seen longest ago first, devices
    last seen before ``overdue_before`` after the punctual ones), then stable position,
    among the first ``sample`` of them in wave and stable position order (by default
    ``OFFER_SAMPLE_FACTOR`` times ``limit``, at least ``OFFER_SAMPLE_MIN``), so that a
    search costs the same with half a million pending devices as with a hundred thousand.
    Devices waiting for a retry time are left out,
    and devices waiting for their runtime (``requires_runtime``) until the runtime
    version they report meets it (engine.requires). Only a runtime's report gives a
    version here: a report from elsewhere (no runtime version, e.g. imported from the
    field) waits for the runtime to adopt the files and report its first result. A
    device whose config digest differs from the one its row wants gives no version
    either: it must be offered.
    With ``runtime`` the version is the reported runtime version (a runtime rollout).
    """
    rd = rollout_devices
    query = (
        select(
            rd.c.device,
            reports.c.agent_version,
            reports.c.runtime_version,
            rd.c.wave,
            rd.c.position,
            rd.c.requires_runtime,
            reports.c.config_digest.label("reported"),
            rd.c.config_digest.label("want"),
            reports.c.last_seen,
        )
        .select_from(rd.join(reports, reports.c.device == rd.c.device))
        .where(
            rd.c.rollout_id == rollout_id,
            rd.c.state == DeviceState.PENDING.value,
            rd.c.wave <= last_wave,
            or_(rd.c.retry_at.is_(None), rd.c.retry_at <= now),
            reports.c.last_seen >= online_since,
        )
    )
    ready = query.where(rd.c.requires_runtime.is_(None)).order_by(rd.c.wave, rd.c.position)
    if overdue_before is None:
        rows = list(conn.execute(ready.limit(limit)))
    else:
        # The due order needs each row's report, so no index gives it: sorting every
        # pending device cost 1.3 s a search at 500,000 (PostgreSQL). The first ``sample``
        # in position order, an index range, are sorted instead; positions are random, so
        # they are a fair sample of when the devices are due.
        size = sample if sample is not None else max(OFFER_SAMPLE_FACTOR * limit, OFFER_SAMPLE_MIN)
        sampled = ready.limit(size).subquery()
        overdue = case((sampled.c.last_seen < overdue_before, 1), else_=0)
        due = select(sampled).order_by(
            sampled.c.wave, overdue, sampled.c.last_seen, sampled.c.position
        )
        rows = list(conn.execute(due.limit(limit)))
    # Waiting devices are read apart so that many of them cannot fill ``limit``, and only
    # in rollouts of a release with a runtime requirement (the others have none); all of
    # them, since those whose runtime meets the requirement may be anywhere among them.
    requirement = conn.execute(
        select(rollouts.c.requires_runtime).where(rollouts.c.id == rollout_id)
    ).scalar()
    if requirement is not None:
        waiting = conn.execute(query.where(rd.c.requires_runtime.is_not(None)))
        met = [w for w in waiting if runtime_satisfies(w.requires_runtime, w.runtime_version)]
        rows = sorted([*rows, *met], key=_offer_order(overdue_before))[:limit]
    if runtime:
        return [(str(r.device), r.runtime_version) for r in rows]
    return [
        (
            str(r.device),
            r.agent_version
            if r.runtime_version is not None and (r.want is None or r.reported == r.want)
            else None,
        )
        for r in rows
    ]


def _offer_order(overdue_before: datetime | None) -> Callable[[Any], tuple[Any, ...]]:
    """The sort key of ``offer_candidates`` rows, as its statement orders them."""
    if overdue_before is None:
        return lambda r: (r.wave, r.position)
    return lambda r: (r.wave, r.last_seen < overdue_before, r.last_seen, r.position)


@dataclass(frozen=True)
class WatchedDevice:
    """A device on the release whose agent's cost is compared with its previous release's."""

    device: str
    state: DeviceState  # in_progress or succeeded
    from_version: str
    before: Usage | None
    after: Usage | None


def _usage(version: str, row: Sequence[Any], *, latest: bool) -> Usage | None:
    """A ``performance`` row's figures (None: no samples): the latest RSS for the release
    judged, the mean for the one before."""
    samples, cpu_samples, cpu_sum, rss_sum, rss_last = row
    if not samples:
        return None
    return Usage(
        version=version,
        samples=int(samples),
        cpu_percent=float(cpu_sum) / int(cpu_samples) if cpu_samples else None,
        rss_bytes=float(rss_last) if latest else float(rss_sum) / int(samples),
    )


def watched_devices(
    conn: Connection, rollout_id: int, release: str, since: datetime
) -> list[WatchedDevice]:
    """Devices of the rollout that took ``release`` and finished after ``since`` (or are
    still updating), with their agent's usage on the release and on the one before."""
    rd = rollout_devices
    new = performance.alias("new")
    old = performance.alias("old")
    columns = ("samples", "cpu_samples", "cpu_sum", "rss_sum", "rss_last")
    rows = conn.execute(
        select(
            rd.c.device,
            rd.c.state,
            rd.c.from_version,
            *[new.c[c] for c in columns],
            *[old.c[c] for c in columns],
        )
        .select_from(
            rd.join(new, and_(new.c.device == rd.c.device, new.c.version == release)).outerjoin(
                old, and_(old.c.device == rd.c.device, old.c.version == rd.c.from_version)
            )
        )
        .where(
            rd.c.rollout_id == rollout_id,
            rd.c.from_version.is_not(None),
            rd.c.attempts > 0,
            or_(
                rd.c.state == DeviceState.IN_PROGRESS.value,
                and_(rd.c.state == DeviceState.SUCCEEDED.value, rd.c.finished_at > since),
            ),
        )
    ).all()
    return [
        WatchedDevice(
            device=row[0],
            state=DeviceState(row[1]),
            from_version=row[2],
            after=_usage(release, row[3:8], latest=True),
            before=_usage(row[2], row[8:13], latest=False),
        )
        for row in rows
    ]


def regression(conn: Connection, rollout_id: int, wave: int) -> tuple[str, str] | None:
    """(device, reason) of a device of ``wave`` failed by the performance policy, or None."""
    rd = rollout_devices
    row = conn.execute(
        select(rd.c.device, rd.c.reason)
        .where(
            rd.c.rollout_id == rollout_id,
            rd.c.wave == wave,
            rd.c.state == DeviceState.REGRESSED.value,
        )
        .order_by(rd.c.finished_at, rd.c.device)
        .limit(1)
    ).first()
    return None if row is None else (str(row.device), str(row.reason or ""))
