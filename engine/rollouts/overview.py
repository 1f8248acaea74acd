"""The fleet at a glance and the device list, as aggregate and paged queries (100k devices).

The server knows groups through the rollouts `engine apply` recorded: a
group's devices are those of its newest rollout, and a device's state is its
state there. The fleet's devices are
those that enrolled or reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    and_,
    case,
    exists,
    false,
    func,
    literal_column,
    select,
    union_all,
)

from engine.capabilities import runtime_label, stored_can_update
from engine.rollouts.model import FAILED_STATES, DeviceState, RolloutState
from engine.rollouts.policy import shown_reason
from engine.store.schema import devices, heartbeats, reports, rollout_devices, rollouts
from states.plan import RUNTIME

__all__ = [
    "DeviceFilter",
    "DeviceListPage",
    "DeviceListRow",
    "FleetOverview",
    "RecentFailure",
    "ReleaseOutcomes",
    "fleet_overview",
    "search_devices",
    "unreported_devices",
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
    #: the channel each group follows, as its newest agent rollout recorded it
    channels: dict[str, str] = {}
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
    runtime_version: str | None = None
    #: whether its runtime can take a runtime release (None: it never said, ADR 0024)
    runtime_self_update: bool | None = None

    def runtime(self) -> str:
        """Its runtime version and whether it can update itself, in a few words."""
        return runtime_label(self.runtime_version, self.runtime_self_update)


class DeviceListPage(_Out):
    """A page of the device list and how many devices match in all."""

    total: int
    offset: int
    limit: int
    devices: list[DeviceListRow]


def _since(now: datetime, online_within: float) -> datetime:
    return now - timedelta(seconds=online_within)


def fleet_overview(conn: Connection, *, now: datetime, online_within: float) -> FleetOverview:
    """Devices by version, platform, group and online state; failures; outcomes per release.

    One grouped pass over the reports and one over the rollouts' devices.
    """
    since = _since(now, online_within)
    is_online = case((reports.c.last_seen >= since, 1), else_=0)
    versions: dict[str, int] = {}
    platforms: dict[str, int] = {}
    reported = online = 0
    for version, platform, up, n in conn.execute(
        select(reports.c.agent_version, reports.c.platform, is_online, func.count()).group_by(
            reports.c.agent_version, reports.c.platform, is_online
        )
    ):
        count = int(n)
        reported += count
        online += count if up else 0
        key = str(version) if version is not None else "none"
        versions[key] = versions.get(key, 0) + count
        place = str(platform or "unknown")
        platforms[place] = platforms.get(place, 0) + count
    never = conn.execute(
        select(func.count())
        .select_from(devices.outerjoin(reports, reports.c.device == devices.c.device))
        .where(reports.c.device.is_(None))
    ).scalar_one()
    heads: dict[int, tuple[str, str, str, RolloutState]] = {}
    newest: dict[str, int] = {}
    newest_agent: dict[str, tuple[int, str | None]] = {}
    for i, g, release, name, state, component, channel in conn.execute(
        select(
            rollouts.c.id,
            rollouts.c.group_name,
            rollouts.c.release,
            rollouts.c.name,
            rollouts.c.state,
            rollouts.c.component,
            rollouts.c.channel,
        )
    ):
        rollout_id, group = int(i), str(g)
        heads[rollout_id] = (group, str(release), str(name), RolloutState(state))
        newest[group] = max(newest.get(group, 0), rollout_id)
        if component != RUNTIME and rollout_id > newest_agent.get(group, (0, None))[0]:
            newest_agent[group] = (rollout_id, channel)
    rd = rollout_devices
    day = now - timedelta(hours=24)
    recently = case((and_(rd.c.finished_at.is_not(None), rd.c.finished_at >= day), 1), else_=0)
    attempted = case((rd.c.attempts > 0, 1), else_=0)
    groups: dict[str, int] = {}
    failures = 0
    outcomes: dict[str, dict[str, int]] = {}
    for rollout_id, state, tried, recent, n in conn.execute(
        select(rd.c.rollout_id, rd.c.state, attempted, recently, func.count()).group_by(
            rd.c.rollout_id, rd.c.state, attempted, recently
        )
    ):
        count = int(n)
        group, release, *_ = heads[int(rollout_id)]
        if newest[group] == rollout_id:
            groups[group] = groups.get(group, 0) + count
        if state in _FAILED and recent:
            failures += count
        if tried:
            counts = outcomes.setdefault(release, dict.fromkeys(_KINDS, 0))
            counts[_KIND_OF.get(str(state), "in_progress")] += count
    recent_rows = conn.execute(
        select(
            rd.c.device, rd.c.rollout_id, rd.c.state, rd.c.reason, rd.c.retry_at, rd.c.finished_at
        )
        .where(rd.c.state.in_(_FAILED), rd.c.finished_at >= day)
        .order_by(rd.c.finished_at.desc())
        .limit(10)
    ).all()
    return FleetOverview(
        generated_at=now,
        devices=reported + int(never),
        online=online,
        offline=reported - online,
        never_reported=int(never),
        versions=dict(sorted(versions.items())),
        platforms=dict(sorted(platforms.items())),
        groups=dict(sorted(groups.items())),
        channels={g: str(c) for g, (_, c) in newest_agent.items() if c is not None},
        failures_24h=failures,
        recent_failures=[
            RecentFailure(
                device=r.device,
                rollout_id=r.rollout_id,
                rollout=heads[int(r.rollout_id)][2],
                state=DeviceState(r.state),
                reason=shown_reason(
                    r.reason, retry_at=r.retry_at, rollout=heads[int(r.rollout_id)][3], now=now
                ),
                finished_at=r.finished_at,
            )
            for r in recent_rows
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
_KIND_OF = {
    DeviceState.SUCCEEDED.value: "succeeded",
    DeviceState.ROLLED_BACK.value: "rolled_back",
    **dict.fromkeys(_FAILED, "failed"),
}


def _in_current_rollout(conn: Connection, filters: DeviceFilter) -> Select[Any]:
    """Devices in the newest rollout of ``filters.group`` (or of each group), in ``filters.state``.

    A group's newest rollout holds its devices (a rollout of a group lists all
    of them), so no per-device search for its newest rollout is needed.
    """
    newest = select(func.max(rollouts.c.id)).group_by(rollouts.c.group_name)
    if filters.group is not None:
        newest = newest.where(rollouts.c.group_name == filters.group)
    ids = [int(i) for (i,) in conn.execute(newest)]
    rd = rollout_devices
    query = select(rd.c.device).where(rd.c.rollout_id.in_(ids))
    if filters.state is not None:
        query = query.where(rd.c.state == filters.state.value)
    return query


def unreported_devices(conn: Connection) -> list[str]:
    """Devices enrolled that never reported (usually few: a report follows enrollment)."""
    query = select(devices.c.device).where(~exists().where(reports.c.device == devices.c.device))
    return [str(d) for (d,) in conn.execute(query)]


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def search_devices(
    conn: Connection,
    filters: DeviceFilter,
    *,
    now: datetime,
    online_within: float,
    limit: int = 50,
    offset: int = 0,
    unreported: Sequence[str] | None = None,
) -> DeviceListPage:
    """A page of the devices matching ``filters``, sorted by id, and how many match.

    Devices that reported are read in the order of the reports' key; devices
    enrolled without a report yet (no version, offline) are merged in only
    when there are any that match. ``unreported`` is ``unreported_devices``
    read a moment ago (a caller showing many pages may keep it), else read here.
    """
    since = _since(now, online_within)
    reported: list[ColumnElement[bool]] = []
    if unreported is None:
        unreported = unreported_devices(conn)
    registered: list[ColumnElement[bool]] = [devices.c.device.in_(list(unreported))]
    if filters.q:
        reported.append(reports.c.device.like(_like(filters.q), escape="\\"))
        registered.append(devices.c.device.like(_like(filters.q), escape="\\"))
    if filters.version is not None:
        if filters.version == "none":
            reported.append(reports.c.agent_version.is_(None))
        else:
            reported.append(reports.c.agent_version == filters.version)
            registered.append(false())
    if filters.platform is not None:
        reported.append(reports.c.platform == filters.platform)
        registered.append(devices.c.platform == filters.platform)
    if filters.online is True:
        reported.append(reports.c.last_seen >= since)
        registered.append(false())
    elif filters.online is False:
        reported.append(reports.c.last_seen < since)
    if filters.group is not None or filters.state is not None:
        current = _in_current_rollout(conn, filters)
        reported.append(reports.c.device.in_(current))
        registered.append(devices.c.device.in_(current))
    only_reported = select(reports.c.device.label("device")).where(*reported)
    only_registered = select(devices.c.device.label("device")).where(*registered)
    count_reported = conn.execute(
        select(func.count()).select_from(reports).where(*reported)
    ).scalar_one()
    count_registered = (
        conn.execute(select(func.count()).select_from(devices).where(*registered)).scalar_one()
        if unreported
        else 0
    )
    if count_registered:
        # a compound select ordered as a whole: SQLite merges the two key-ordered sides
        query: Any = union_all(only_reported, only_registered).order_by(literal_column("device"))
    else:
        query = only_reported.order_by(reports.c.device)
    page = [str(d) for (d,) in conn.execute(query.limit(limit).offset(offset))]
    return DeviceListPage(
        total=int(count_reported) + int(count_registered),
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
                reports.c.runtime_version,
                reports.c.features,
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
                runtime_version=rep.runtime_version if rep is not None else None,
                runtime_self_update=stored_can_update(rep.features) if rep is not None else None,
            )
        )
    return out
