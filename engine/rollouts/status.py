"""Status of rollouts, their waves and devices, and the fleet's versions (CLI and operator API).

Device states are shown in buckets: pending (pending or offered, and seen
recently), in progress (updating, or rolling back), succeeded, failed (failed,
timed out, rollback failed), rolled back, offline (pending or offered but not
seen within ``Timings.offline_after``, or never), excluded (pinned, blocked,
overridden by a higher-priority rollout, cancelled).
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import Connection, func, select

from engine.rollouts.errors import RolloutNotFoundError
from engine.rollouts.model import DeviceState, RolloutState, Timings
from engine.rollouts.performance import ReleasePerformance, release_performance
from engine.rollouts.windows import in_window
from engine.store.schema import reports, rollout_devices, rollouts
from inventory.models import MaintenanceWindow

__all__ = [
    "BUCKETS",
    "BUCKET_OF",
    "DeviceStatus",
    "FleetStatus",
    "RolloutStatus",
    "WaveStatus",
    "fleet_status",
    "fleet_versions",
    "resolve_rollout",
    "rollout_devices_status",
    "rollout_status",
    "waits_on_paused_gate",
]

#: Count buckets, in display order.
BUCKETS = ("pending", "in_progress", "succeeded", "failed", "rolled_back", "offline", "excluded")

#: The bucket of each device state.
BUCKET_OF: dict[str, str] = {
    DeviceState.PENDING.value: "pending",
    DeviceState.OFFERED.value: "pending",
    DeviceState.IN_PROGRESS.value: "in_progress",
    DeviceState.ROLLBACK.value: "in_progress",
    DeviceState.ROLLING_BACK.value: "in_progress",
    DeviceState.SUCCEEDED.value: "succeeded",
    DeviceState.FAILED.value: "failed",
    DeviceState.TIMED_OUT.value: "failed",
    DeviceState.REGRESSED.value: "failed",
    DeviceState.ROLLBACK_FAILED.value: "failed",
    DeviceState.ROLLED_BACK.value: "rolled_back",
    DeviceState.EXCLUDED.value: "excluded",
    DeviceState.OVERRIDDEN.value: "excluded",
    DeviceState.CANCELLED.value: "excluded",
}


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class WaveStatus(_Out):
    """Counts of one wave of a rollout."""

    index: int
    percent: float
    open: bool
    devices: int
    pending: int = 0
    in_progress: int = 0
    succeeded: int = 0
    failed: int = 0
    rolled_back: int = 0
    offline: int = 0
    excluded: int = 0


class RolloutStatus(_Out):
    """One rollout: its state, policy, window and per-wave counts."""

    id: int
    name: str
    group: str
    release: str
    state: RolloutState
    reason: str | None
    priority: int
    current_wave: int
    window_open: bool
    policy: dict[str, Any]
    maintenance_window: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    totals: dict[str, int]
    waves: list[WaveStatus]
    after: list[str] = []  # gate rollouts (group@release) it waits or waited for
    after_ids: list[int] = []  # their ids
    component: str = "agent"  # or "runtime": a runtime release (group@runtime-V)
    channel: str | None = None  # the channel the group follows, its release resolved from

    @property
    def is_settled(self) -> bool:
        """True when the rollout no longer moves by itself (neither active nor waiting)."""
        return self.state not in (RolloutState.ACTIVE, RolloutState.WAITING)


class DeviceStatus(_Out):
    """One device of a rollout."""

    device: str
    wave: int
    state: DeviceState
    platform: str
    from_version: str | None
    attempts: int
    reason: str | None
    rollback_to: str | None
    started_at: datetime | None
    finished_at: datetime | None


class FleetStatus(_Out):
    """What `engine status --json` prints."""

    generated_at: datetime
    rollouts: list[RolloutStatus]
    versions: dict[str, int]
    devices_reporting: int
    performance: list[ReleasePerformance] = []  # the agent's CPU and memory per release


#: A rollout number: ASCII digits that fit a 63-bit integer ("²" or "①" are names, not numbers).
_ROLLOUT_ID_RE = re.compile(r"[0-9]{1,18}")


def resolve_rollout(conn: Connection, ref: str) -> int:
    """The id of rollout ``ref``: a number, or a name (group@release: the newest such).

    Raises RolloutNotFoundError naming what was looked for.
    """
    text = ref.strip().lstrip("#")
    if _ROLLOUT_ID_RE.fullmatch(text):
        found = conn.execute(select(rollouts.c.id).where(rollouts.c.id == int(text))).first()
    else:
        found = conn.execute(
            select(rollouts.c.id)
            .where(rollouts.c.name == text)
            .order_by(rollouts.c.id.desc())
            .limit(1)
        ).first()
    if found is None:
        raise RolloutNotFoundError(
            f"no rollout {ref!r}: give a rollout number or group@release as `engine status` "
            "lists them"
        )
    return int(found[0])


def rollout_status(
    conn: Connection,
    *,
    now: datetime,
    rollout_id: int | None = None,
    timings: Timings | None = None,
    include_superseded: bool = False,
    limit: int = 50,
) -> list[RolloutStatus]:
    """Status of one rollout, or of the newest ``limit`` ones (superseded ones left out)."""
    offline_before = now - (timings or Timings()).offline_after
    query = select(rollouts).order_by(rollouts.c.id.desc())
    if rollout_id is not None:
        query = query.where(rollouts.c.id == rollout_id)
    elif not include_superseded:
        query = query.where(rollouts.c.state != RolloutState.SUPERSEDED.value).limit(limit)
    result: list[RolloutStatus] = []
    rd = rollout_devices
    waiting = [DeviceState.PENDING.value, DeviceState.OFFERED.value]
    for r in conn.execute(query).all():
        policy: dict[str, Any] = json.loads(r.policy)
        window_data = json.loads(r.maintenance_window) if r.maintenance_window else None
        window = MaintenanceWindow.model_validate(window_data) if window_data else None
        percents: list[float] = [float(p) for p in policy.get("waves", [100])]
        counts = [dict.fromkeys(BUCKETS, 0) for _ in percents]
        # counted from the index alone; only waiting devices need their report (offline)
        for wave, state, count in conn.execute(
            select(rd.c.wave, rd.c.state, func.count())
            .where(rd.c.rollout_id == r.id)
            .group_by(rd.c.wave, rd.c.state)
        ):
            if 0 <= wave < len(counts):
                counts[wave][BUCKET_OF.get(state, "excluded")] += int(count)
        for wave, count in conn.execute(
            select(rd.c.wave, func.count())
            .select_from(rd.outerjoin(reports, reports.c.device == rd.c.device))
            .where(
                rd.c.rollout_id == r.id,
                rd.c.state.in_(waiting),
                reports.c.last_seen.is_(None) | (reports.c.last_seen < offline_before),
            )
            .group_by(rd.c.wave)
        ):
            if 0 <= wave < len(counts):
                counts[wave]["pending"] -= int(count)
                counts[wave]["offline"] += int(count)
        totals = dict.fromkeys(BUCKETS, 0)
        # a rollout gated by rollout.after has no wave open until its gates complete
        started = r.wave_opened_at is not None or not r.after_ids
        waves: list[WaveStatus] = []
        for index, (percent, c) in enumerate(zip(percents, counts, strict=True)):
            for k, v in c.items():
                totals[k] += v
            waves.append(
                WaveStatus(
                    index=index,
                    percent=percent,
                    open=started and index <= r.current_wave,
                    devices=sum(c.values()),
                    **c,
                )
            )
        result.append(
            RolloutStatus(
                id=r.id,
                name=r.name,
                group=r.group_name,
                release=r.release,
                state=RolloutState(r.state),
                reason=r.reason,
                priority=r.priority,
                current_wave=r.current_wave,
                window_open=in_window(window, now),
                policy=policy,
                maintenance_window=window_data,
                created_at=r.created_at,
                updated_at=r.updated_at,
                finished_at=r.finished_at,
                totals=totals,
                waves=waves,
                after=json.loads(r.after_names) if r.after_names else [],
                after_ids=json.loads(r.after_ids) if r.after_ids else [],
                component=r.component,
                channel=r.channel,
            )
        )
    return result


def waits_on_paused_gate(conn: Connection, status: RolloutStatus) -> bool:
    """True when a waiting rollout cannot move by itself: a gate of it is paused.

    (A halted, aborted or superseded gate halts it at the controller's next tick.)
    """
    if status.state is not RolloutState.WAITING or not status.after_ids:
        return False
    states = {
        str(s)
        for (s,) in conn.execute(
            select(rollouts.c.state).where(rollouts.c.id.in_(status.after_ids))
        )
    }
    failed = {RolloutState.HALTED.value, RolloutState.ABORTED.value, RolloutState.SUPERSEDED.value}
    return RolloutState.PAUSED.value in states and not states & failed


def rollout_devices_status(
    conn: Connection, rollout_id: int, *, limit: int = 1000, offset: int = 0
) -> list[DeviceStatus]:
    """The devices of a rollout in wave order (a page of ``limit`` from ``offset``)."""
    rd = rollout_devices
    rows = conn.execute(
        select(rd)
        .where(rd.c.rollout_id == rollout_id)
        .order_by(rd.c.wave, rd.c.position)
        .limit(limit)
        .offset(offset)
    ).all()
    return [
        DeviceStatus(
            device=row.device,
            wave=row.wave,
            state=DeviceState(row.state),
            platform=row.platform,
            from_version=row.from_version,
            attempts=row.attempts,
            reason=row.reason,
            rollback_to=row.rollback_to,
            started_at=row.started_at,
            finished_at=row.finished_at,
        )
        for row in rows
    ]


def fleet_versions(conn: Connection) -> dict[str, int]:
    """How many reporting devices run each agent version ("none": no agent installed)."""
    rows = conn.execute(
        select(reports.c.agent_version, func.count()).group_by(reports.c.agent_version)
    ).all()
    found = {(v if v is not None else "none"): int(n) for v, n in rows}
    return dict(sorted(found.items()))


def fleet_status(
    conn: Connection,
    *,
    now: datetime,
    rollout_id: int | None = None,
    timings: Timings | None = None,
    performance: bool = False,
) -> FleetStatus:
    """Rollouts (one, or the newest) with wave counts, plus the fleet's versions and, with
    ``performance``, the agent's cost per release (reads every device's samples)."""
    if rollout_id is not None:
        exists = conn.execute(select(rollouts.c.id).where(rollouts.c.id == rollout_id)).first()
        if exists is None:
            raise RolloutNotFoundError(f"no rollout #{rollout_id}")
    versions = fleet_versions(conn)
    return FleetStatus(
        generated_at=now,
        rollouts=rollout_status(conn, now=now, rollout_id=rollout_id, timings=timings),
        versions=versions,
        devices_reporting=sum(versions.values()),
        performance=release_performance(conn) if performance else [],
    )
