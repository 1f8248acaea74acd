"""The fleet at a glance and the device list, as aggregate and paged queries (100k devices).

A device's group and state are those of its newest rollout (the server knows
groups through the rollouts `engine apply` recorded). The fleet's devices are
those that enrolled or reported.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import ColumnElement, Connection, ScalarSelect, and_, case, func, select, union

from engine.rollouts.model import FAILED_STATES, DeviceState
from engine.rollouts.status import fleet_versions
from engine.store.schema import devices, heartbeats, reports, rollout_devices, rollouts

__all__ = [
    "DeviceFilter",
    "DeviceListPage",
    "DeviceListRow",
    "FleetOverview",
    "RecentFailure",
    "ReleaseOutcomes",
    "fleet_overview",
    "search_devices",
]

_FAILED = [s.value for s in (*FAILED_STATES, DeviceState.ROLLBACK_FAILED)]
_SEARCH_MAX = 200


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class ReleaseOutcomes(_Out):
    """Devices that took one release: how their updates ended."""

    release: str
    succeeded: int
    failed: int  # failed, timed out, rollback failed
    rolled_back: int  # took it, then sent back when its rollout halted
    in_progress: int
    success_rate: float | None  # succeeded / (succeeded + failed); None before any outcome


class RecentFailure(_Out):
    """A device whose update failed recently."""

    device: str
    rollout_id: int
    rollout: str
    state: DeviceState
    reason: str | None
    finished_at: datetime


class FleetOverview(_Out):
    """Counts across the fleet for the dashboard's first page."""

    generated_at: datetime
    devices: int
    online: int
    offline: int  # reported, but not within the online time
    never_reported: int  # enrolled, no report yet
    versions: dict[str, int]
    platforms: dict[str, int]
    groups: dict[str, int]  # devices in each group's newest rollout
    failures_24h: int
    recent_failures: list[RecentFailure]
    releases: list[ReleaseOutcomes]


class DeviceFilter(_Out):
    """Which devices the list shows (every given field must match)."""

    q: str | None = Field(default=None, max_length=_SEARCH_MAX, description="part of the id")
    group: str | None = Field(default=None, max_length=200)
    version: str | None = Field(default=None, max_length=100, description='"none": no agent')
    state: DeviceState | None = None
    online: bool | None = None
    platform: str | None = Field(default=None, max_length=16)


class DeviceListRow(_Out):
    """One device in the list."""

    device: str
    platform: str | None
    agent_version: str | None
    last_seen: datetime | None
    online: bool
    last_result: str | None
    heartbeat_version: str | None
    revoked: bool
    group: str | None
    rollout_id: int | None
    state: DeviceState | None


class DeviceListPage(_Out):
    """A page of the device list and how many devices match in all."""

    total: int
    offset: int
    limit: int
    devices: list[DeviceListRow]


def _since(now: datetime, online_within: float) -> datetime:
    return now - timedelta(seconds=online_within)


def fleet_overview(conn: Connection, *, now: datetime, online_within: float) -> FleetOverview:
    """Devices by version, platform, group and online state; failures; outcomes per release."""
    since = _since(now, online_within)
    reported, online = conn.execute(
        select(func.count(), func.sum(case((reports.c.last_seen >= since, 1), else_=0)))
    ).one()
    never = conn.execute(
        select(func.count())
        .select_from(devices.outerjoin(reports, reports.c.device == devices.c.device))
        .where(reports.c.device.is_(None))
    ).scalar_one()
    platforms = {
        str(p or "unknown"): int(n)
        for p, n in conn.execute(
            select(reports.c.platform, func.count()).group_by(reports.c.platform)
        )
    }
    newest = (
        select(rollouts.c.group_name, func.max(rollouts.c.id).label("id"))
        .group_by(rollouts.c.group_name)
        .subquery()
    )
    groups = {
        str(g): int(n)
        for g, n in conn.execute(
            select(newest.c.group_name, func.count())
            .select_from(newest.join(rollout_devices, rollout_devices.c.rollout_id == newest.c.id))
            .group_by(newest.c.group_name)
            .order_by(newest.c.group_name)
        )
    }
    day = now - timedelta(hours=24)
    rd = rollout_devices
    failed_recently = and_(rd.c.state.in_(_FAILED), rd.c.finished_at >= day)
    failures = conn.execute(select(func.count()).where(failed_recently)).scalar_one()
    recent = conn.execute(
        select(
            rd.c.device, rd.c.rollout_id, rd.c.state, rd.c.reason, rd.c.finished_at, rollouts.c.name
        )
        .select_from(rd.join(rollouts, rollouts.c.id == rd.c.rollout_id))
        .where(failed_recently)
        .order_by(rd.c.finished_at.desc())
        .limit(10)
    ).all()
    outcomes: dict[str, dict[str, int]] = {}
    for release, state, n in conn.execute(
        select(rollouts.c.release, rd.c.state, func.count())
        .select_from(rd.join(rollouts, rollouts.c.id == rd.c.rollout_id))
        .where(rd.c.attempts > 0)
        .group_by(rollouts.c.release, rd.c.state)
    ):
        kind = (
            "succeeded"
            if state == DeviceState.SUCCEEDED.value
            else "failed"
            if state in _FAILED
            else "rolled_back"
            if state == DeviceState.ROLLED_BACK.value
            else "in_progress"
        )
        counts = outcomes.setdefault(str(release), dict.fromkeys(_KINDS, 0))
        counts[kind] += int(n)
    return FleetOverview(
        generated_at=now,
        devices=int(reported) + int(never),
        online=int(online or 0),
        offline=int(reported) - int(online or 0),
        never_reported=int(never),
        versions=fleet_versions(conn),
        platforms=dict(sorted(platforms.items())),
        groups=groups,
        failures_24h=int(failures),
        recent_failures=[
            RecentFailure(
                device=r.device,
                rollout_id=r.rollout_id,
                rollout=r.name,
                state=DeviceState(r.state),
                reason=r.reason,
                finished_at=r.finished_at,
            )
            for r in recent
        ],
        releases=[
            ReleaseOutcomes(
                release=release,
                **c,
                success_rate=(
                    c["succeeded"] / (c["succeeded"] + c["failed"])
                    if c["succeeded"] + c["failed"]
                    else None
                ),
            )
            for release, c in sorted(outcomes.items())
        ],
    )


_KINDS = ("succeeded", "failed", "rolled_back", "in_progress")


def _newest_rollout_of(device_column: Any) -> ScalarSelect[Any]:
    """The id of the newest rollout a device is part of (correlated to ``device_column``)."""
    x = rollout_devices.alias("x")
    return select(func.max(x.c.rollout_id)).where(x.c.device == device_column).scalar_subquery()


def search_devices(
    conn: Connection,
    filters: DeviceFilter,
    *,
    now: datetime,
    online_within: float,
    limit: int = 50,
    offset: int = 0,
) -> DeviceListPage:
    """A page of the devices matching ``filters``, sorted by id, and how many match."""
    since = _since(now, online_within)
    ids = union(select(reports.c.device), select(devices.c.device)).subquery("ids")
    current = rollout_devices.alias("cur")
    base = ids.outerjoin(reports, reports.c.device == ids.c.device).outerjoin(
        devices, devices.c.device == ids.c.device
    )
    needs_rollout = filters.group is not None or filters.state is not None
    if needs_rollout:
        base = base.outerjoin(
            current,
            and_(
                current.c.device == ids.c.device,
                current.c.rollout_id == _newest_rollout_of(ids.c.device),
            ),
        ).outerjoin(rollouts, rollouts.c.id == current.c.rollout_id)
    where: list[ColumnElement[bool]] = []
    if filters.q:
        pattern = (
            "%" + filters.q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        )
        where.append(ids.c.device.like(pattern, escape="\\"))
    if filters.version is not None:
        where.append(
            reports.c.agent_version.is_(None)
            if filters.version == "none"
            else reports.c.agent_version == filters.version
        )
    if filters.platform is not None:
        where.append(func.coalesce(reports.c.platform, devices.c.platform) == filters.platform)
    if filters.online is True:
        where.append(reports.c.last_seen >= since)
    elif filters.online is False:
        where.append(reports.c.last_seen.is_(None) | (reports.c.last_seen < since))
    if filters.group is not None:
        where.append(rollouts.c.group_name == filters.group)
    if filters.state is not None:
        where.append(current.c.state == filters.state.value)
    total = conn.execute(select(func.count()).select_from(base).where(*where)).scalar_one()
    page = [
        str(d)
        for (d,) in conn.execute(
            select(ids.c.device)
            .select_from(base)
            .where(*where)
            .order_by(ids.c.device)
            .limit(limit)
            .offset(offset)
        )
    ]
    return DeviceListPage(
        total=int(total),
        offset=offset,
        limit=limit,
        devices=_rows(conn, page, since),
    )


def _rows(conn: Connection, page: list[str], since: datetime) -> list[DeviceListRow]:
    """The list's columns for the devices of one page, in that order."""
    if not page:
        return []
    found = {
        r.device: r
        for r in conn.execute(
            select(
                reports.c.device,
                reports.c.platform,
                reports.c.agent_version,
                reports.c.last_seen,
                reports.c.last_result,
            ).where(reports.c.device.in_(page))
        )
    }
    registry = {
        r.device: r
        for r in conn.execute(
            select(devices.c.device, devices.c.platform, devices.c.revoked_at).where(
                devices.c.device.in_(page)
            )
        )
    }
    beats = {
        str(d): str(v)
        for d, v in conn.execute(
            select(heartbeats.c.device, heartbeats.c.version).where(heartbeats.c.device.in_(page))
        )
    }
    newest = (
        select(rollout_devices.c.device, func.max(rollout_devices.c.rollout_id).label("rid"))
        .where(rollout_devices.c.device.in_(page))
        .group_by(rollout_devices.c.device)
        .subquery()
    )
    current = {
        r.device: r
        for r in conn.execute(
            select(
                rollout_devices.c.device,
                rollout_devices.c.rollout_id,
                rollout_devices.c.state,
                rollouts.c.group_name,
            ).select_from(
                newest.join(
                    rollout_devices,
                    and_(
                        rollout_devices.c.device == newest.c.device,
                        rollout_devices.c.rollout_id == newest.c.rid,
                    ),
                ).join(rollouts, rollouts.c.id == rollout_devices.c.rollout_id)
            )
        )
    }
    out: list[DeviceListRow] = []
    for device in page:
        rep, reg, cur = found.get(device), registry.get(device), current.get(device)
        last_seen = rep.last_seen if rep is not None else None
        out.append(
            DeviceListRow(
                device=device,
                platform=(rep.platform if rep is not None and rep.platform else None)
                or (reg.platform if reg is not None else None),
                agent_version=rep.agent_version if rep is not None else None,
                last_seen=last_seen,
                online=last_seen is not None and last_seen >= since,
                last_result=rep.last_result if rep is not None else None,
                heartbeat_version=beats.get(device),
                revoked=reg is not None and reg.revoked_at is not None,
                group=cur.group_name if cur is not None else None,
                rollout_id=cur.rollout_id if cur is not None else None,
                state=DeviceState(cur.state) if cur is not None else None,
            )
        )
    return out
