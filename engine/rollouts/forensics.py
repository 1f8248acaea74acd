"""Why a device is where it is: its report, heartbeat, transaction, rollouts and step events.

The reads behind `engine devices show`, `engine status --rollout N`, the
operator API and the dashboard's device and rollout pages. Reasons are shown
as true now (``policy.shown_reason``): a retry promised before the rollout
halted is not shown as still coming.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from pydantic import BaseModel, ConfigDict
from sqlalchemy import Connection, func, select

from engine.capabilities import runtime_label, stored_can_update
from engine.rollouts.model import DeviceState, RolloutState
from engine.rollouts.policy import shown_reason
from engine.rollouts.status import BUCKET_OF
from engine.store.schema import (
    devices,
    events,
    heartbeats,
    performance,
    reports,
    rollout_devices,
    rollouts,
)

__all__ = [
    "DeviceDetail",
    "DeviceRollout",
    "HeartbeatView",
    "LastStep",
    "PerformanceView",
    "ReportView",
    "RolloutDeviceRow",
    "RolloutDevicesPage",
    "StepRecord",
    "TransactionView",
    "device_detail",
    "last_steps",
    "rollout_devices_page",
]

#: Events shown on a device's timeline, newest first.
TIMELINE_LIMIT = 500


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class ReportView(_Out):
    """What the device last reported at check-in."""

    agent_version: str | None
    platform: str | None
    runtime_version: str | None
    known_good: str | None
    last_seen: datetime
    last_result: str | None
    agent_running: bool | None
    #: whether its runtime can take a runtime release (None: it never said, ADR 0024)
    runtime_self_update: bool | None = None

    def runtime(self) -> str:
        """Its runtime version and whether it can update itself, in a few words."""
        return runtime_label(self.runtime_version, self.runtime_self_update)


class TransactionView(_Out):
    """The device's last (or current) update transaction, as it reported it."""

    target: str | None
    phase: str | None
    attempts: int | None
    detail: str | None
    result: str | None


class HeartbeatView(_Out):
    """The agent's last heartbeat the server recorded."""

    version: str
    at: datetime
    pid: int | None
    received_at: datetime


class StepRecord(_Out):
    """One step event a device posted (started, ok or failed, with its detail)."""

    id: int
    target: str
    step: str
    status: str
    detail: str | None
    at: datetime
    received_at: datetime


class PerformanceView(_Out):
    """The agent's CPU and memory on the device under one release (from the runtime's samples)."""

    version: str
    samples: int
    cpu_percent: float | None  # mean over the samples with a CPU figure
    rss_mean_bytes: float
    rss_last_bytes: int
    rss_max_bytes: int
    first_at: datetime
    last_at: datetime


class DeviceRollout(_Out):
    """The device in one rollout: its state there and why."""

    rollout_id: int
    rollout: str
    rollout_state: RolloutState
    release: str
    wave: int
    state: DeviceState
    attempts: int
    from_version: str | None
    rollback_to: str | None
    reason: str | None
    started_at: datetime | None
    finished_at: datetime | None
    retry_at: datetime | None


class DeviceDetail(_Out):
    """Everything the server knows about one device, for finding out why an update failed."""

    device: str
    platform: str | None
    enrolled: bool
    enrolled_at: datetime | None
    revoked_at: datetime | None
    online: bool
    report: ReportView | None
    transaction: TransactionView | None
    heartbeat: HeartbeatView | None
    rollouts: list[DeviceRollout]
    events: list[StepRecord]  # newest first, at most TIMELINE_LIMIT
    events_total: int
    performance: list[PerformanceView] = []  # per release, the newest samples first


class LastStep(_Out):
    """The last step event of a device."""

    target: str
    step: str
    status: str
    detail: str | None
    at: datetime


class RolloutDeviceRow(_Out):
    """One device of a rollout with its state, reason (as true now) and last step."""

    device: str
    wave: int
    state: DeviceState
    bucket: str
    platform: str
    from_version: str | None
    attempts: int
    reason: str | None
    rollback_to: str | None
    started_at: datetime | None
    finished_at: datetime | None
    last_step: LastStep | None
    runtime_version: str | None = None  # as the device last reported it
    #: whether its runtime can take a runtime release (None: it never said, ADR 0024)
    runtime_self_update: bool | None = None

    def runtime(self) -> str:
        """Its runtime version and whether it can update itself, in a few words."""
        return runtime_label(self.runtime_version, self.runtime_self_update)


class RolloutDevicesPage(_Out):
    """A page of a rollout's devices, and how many it has in each state."""

    rollout_id: int
    rollout: str
    rollout_state: RolloutState
    states: dict[str, int]
    total: int  # devices matching the filter
    offset: int
    limit: int
    devices: list[RolloutDeviceRow]


def device_detail(
    conn: Connection, device: str, *, now: datetime, online_within: float
) -> DeviceDetail | None:
    """The device's registry row, report, heartbeat, rollouts and step events; None if unknown."""
    enrolled = conn.execute(select(devices).where(devices.c.device == device)).first()
    rep = conn.execute(select(reports).where(reports.c.device == device)).first()
    beat = conn.execute(select(heartbeats).where(heartbeats.c.device == device)).first()
    rd, r = rollout_devices, rollouts
    memberships = conn.execute(
        select(rd, r.c.name, r.c.state.label("rollout_state"), r.c.release)
        .select_from(rd.join(r, r.c.id == rd.c.rollout_id))
        .where(rd.c.device == device)
        .order_by(rd.c.rollout_id.desc())
    ).all()
    if enrolled is None and rep is None and not memberships:
        return None
    timeline = conn.execute(
        select(events)
        .where(events.c.device == device)
        .order_by(events.c.id.desc())
        .limit(TIMELINE_LIMIT)
    ).all()
    total = conn.execute(select(func.count()).where(events.c.device == device)).scalar_one()
    usage = conn.execute(
        select(performance)
        .where(performance.c.device == device)
        .order_by(performance.c.last_at.desc())
    ).all()
    report = None
    transaction = None
    if rep is not None:
        report = ReportView(
            agent_version=rep.agent_version,
            platform=rep.platform,
            runtime_version=rep.runtime_version,
            known_good=rep.known_good,
            last_seen=rep.last_seen,
            last_result=rep.last_result,
            agent_running=rep.agent_running,
            runtime_self_update=stored_can_update(rep.features),
        )
        if rep.tx_target is not None or rep.tx_phase is not None:
            transaction = TransactionView(
                target=rep.tx_target,
                phase=rep.tx_phase,
                attempts=rep.tx_attempts,
                detail=rep.tx_detail,
                result=rep.last_result,
            )
    return DeviceDetail(
        device=device,
        platform=enrolled.platform if enrolled is not None else rep.platform if rep else None,
        enrolled=enrolled is not None,
        enrolled_at=enrolled.enrolled_at if enrolled is not None else None,
        revoked_at=enrolled.revoked_at if enrolled is not None else None,
        online=rep is not None and (now - rep.last_seen).total_seconds() <= online_within,
        report=report,
        transaction=transaction,
        heartbeat=None
        if beat is None
        else HeartbeatView(
            version=beat.version, at=beat.at, pid=beat.pid, received_at=beat.received_at
        ),
        rollouts=[
            DeviceRollout(
                rollout_id=m.rollout_id,
                rollout=m.name,
                rollout_state=RolloutState(m.rollout_state),
                release=m.release,
                wave=m.wave,
                state=DeviceState(m.state),
                attempts=m.attempts,
                from_version=m.from_version,
                rollback_to=m.rollback_to,
                reason=shown_reason(
                    m.reason,
                    retry_at=m.retry_at,
                    rollout=RolloutState(m.rollout_state),
                    now=now,
                ),
                started_at=m.started_at,
                finished_at=m.finished_at,
                retry_at=m.retry_at
                if RolloutState(m.rollout_state) is RolloutState.ACTIVE
                else None,
            )
            for m in memberships
        ],
        events=[
            StepRecord(
                id=e.id,
                target=e.target,
                step=e.step,
                status=e.status,
                detail=e.detail,
                at=e.at,
                received_at=e.received_at,
            )
            for e in timeline
        ],
        events_total=int(total),
        performance=[
            PerformanceView(
                version=u.version,
                samples=u.samples,
                cpu_percent=u.cpu_sum / u.cpu_samples if u.cpu_samples else None,
                rss_mean_bytes=u.rss_sum / u.samples if u.samples else 0.0,
                rss_last_bytes=u.rss_last,
                rss_max_bytes=u.rss_max,
                first_at=u.first_at,
                last_at=u.last_at,
            )
            for u in usage
        ],
    )


def last_steps(conn: Connection, device_ids: Sequence[str]) -> dict[str, LastStep]:
    """The newest step event of each of ``device_ids`` (a page of them) that posted any."""
    if not device_ids:
        return {}
    newest = (
        select(func.max(events.c.id))
        .where(events.c.device.in_(list(device_ids)))
        .group_by(events.c.device)
    )
    rows = conn.execute(select(events).where(events.c.id.in_(newest))).all()
    return {
        e.device: LastStep(target=e.target, step=e.step, status=e.status, detail=e.detail, at=e.at)
        for e in rows
    }


def rollout_devices_page(
    conn: Connection,
    rollout_id: int,
    *,
    now: datetime,
    states: Sequence[DeviceState] = (),
    limit: int = 100,
    offset: int = 0,
) -> RolloutDevicesPage:
    """The rollout's devices in wave order (only ``states`` when given), with their last step.

    Raises nothing for an unknown id: resolve it first (``resolve_rollout``).
    """
    rd = rollout_devices
    head = conn.execute(
        select(rollouts.c.name, rollouts.c.state).where(rollouts.c.id == rollout_id)
    ).one()
    rollout_state = RolloutState(head.state)
    counts = {
        str(state): int(n)
        for state, n in conn.execute(
            select(rd.c.state, func.count())
            .where(rd.c.rollout_id == rollout_id)
            .group_by(rd.c.state)
        )
    }
    query = select(rd).where(rd.c.rollout_id == rollout_id)
    if states:
        query = query.where(rd.c.state.in_([s.value for s in states]))
    rows = conn.execute(query.order_by(rd.c.wave, rd.c.position).limit(limit).offset(offset)).all()
    steps = last_steps(conn, [row.device for row in rows])
    runtimes = {
        r.device: (r.runtime_version, stored_can_update(r.features))
        for r in conn.execute(
            select(reports.c.device, reports.c.runtime_version, reports.c.features).where(
                reports.c.device.in_([row.device for row in rows])
            )
        )
    }
    wanted = {s.value for s in states}
    total = sum(n for s, n in counts.items() if not wanted or s in wanted)
    return RolloutDevicesPage(
        rollout_id=rollout_id,
        rollout=head.name,
        rollout_state=rollout_state,
        states=dict(sorted(counts.items())),
        total=total,
        offset=offset,
        limit=limit,
        devices=[
            RolloutDeviceRow(
                device=row.device,
                wave=row.wave,
                state=DeviceState(row.state),
                bucket=BUCKET_OF.get(row.state, "excluded"),
                platform=row.platform,
                from_version=row.from_version,
                attempts=row.attempts,
                reason=shown_reason(
                    row.reason, retry_at=row.retry_at, rollout=rollout_state, now=now
                ),
                rollback_to=row.rollback_to,
                started_at=row.started_at,
                finished_at=row.finished_at,
                last_step=steps.get(row.device),
                runtime_version=runtimes.get(row.device, (None, None))[0],
                runtime_self_update=runtimes.get(row.device, (None, None))[1],
            )
            for row in rows
        ],
    )
