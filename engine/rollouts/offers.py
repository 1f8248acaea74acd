"""What a device gets when it checks in: its plan and where its release is, or nothing.

On the check-in hot path: ``offer_rows`` reads the open rollout rows of a
batch of devices in one query, ``decide_offer`` decides each device's answer
from them, and a ``Take`` (one conditional UPDATE) moves the device's row when
it hands out a plan; ``offer_for_device`` does all three for one device.
Release references, parsed policies and windows are cached in memory.
Outcomes (succeeded, failed, rolled back) are judged by the controller's tick
from the stored reports and heartbeats, not here (see docs/rollouts.md).
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlalchemy import Connection, select

from engine.reconfigure import reconfigure_steps
from engine.rollouts.model import DeviceState, RolloutState
from engine.rollouts.policy import FAILURE_RESULTS
from engine.rollouts.runtime_offers import decide_runtime_offer, split_rows
from engine.rollouts.transitions import DeviceEvent, next_device_state
from engine.rollouts.windows import in_window
from engine.steps import describe_steps
from engine.store._types import format_utc
from engine.store.schema import releases
from fleetbase.platform import Platform
from fleetbase.version import Version
from inventory.models import MaintenanceWindow
from states.plan import Action, DevicePlan, ReleaseRef, Step
from states.protocol import RuntimeOffer
from states.report import Report

__all__ = [
    "Decision",
    "Offer",
    "Take",
    "clear_caches",
    "decide_offer",
    "offer_for_device",
    "offer_rows",
    "release_ref",
    "server_release_ref",
]

_WANTED = [
    DeviceState.OFFERED.value,
    DeviceState.IN_PROGRESS.value,
    DeviceState.ROLLBACK.value,
    DeviceState.REGRESSED.value,
]
_LIVE = [
    RolloutState.ACTIVE.value,
    RolloutState.PAUSED.value,
    RolloutState.HALTED.value,
    RolloutState.COMPLETED.value,
]
_OFFERING = (RolloutState.ACTIVE.value, RolloutState.COMPLETED.value)
#: The two state changes a check-in makes, from the device transition table.
_TAKE = (DeviceState.OFFERED, next_device_state(DeviceState.OFFERED, DeviceEvent.TAKE))
_TAKE_ROLLBACK = (DeviceState.ROLLBACK, next_device_state(DeviceState.ROLLBACK, DeviceEvent.TAKE))


@dataclass(frozen=True)
class Offer:
    """A plan handed to a device and the release it needs."""

    plan: DevicePlan
    release: ReleaseRef


@dataclass(frozen=True)
class _ReleaseInfo:
    ref: ReleaseRef
    sizes: dict[str, tuple[int, int]]  # platform -> (file count, total bytes)


_release_cache: dict[str, _ReleaseInfo] = {}
_window_cache: dict[str, MaintenanceWindow] = {}
_steps_cache: dict[tuple[str, int, str, str | None], list[Step]] = {}
_lock = threading.Lock()


def clear_caches() -> None:
    """Forget cached releases and windows (tests; a re-recorded release refreshes itself)."""
    with _lock:
        _release_cache.clear()
        _window_cache.clear()
        _steps_cache.clear()


def server_release_ref(version: str, serial: int, manifest_sha256: str) -> ReleaseRef:
    """The ReleaseRef devices get from a server: server paths, artifacts by hash."""
    return ReleaseRef.model_construct(
        version=Version(version),
        serial=serial,
        manifest=f"/v1/releases/{version}/manifest",
        signature=f"/v1/releases/{version}/signature",
        manifest_sha256=manifest_sha256,
        artifacts="/v1/artifacts/",
        artifacts_by_hash=True,
    )


def _load_release(conn: Connection, version: str) -> _ReleaseInfo | None:
    row = conn.execute(
        select(releases.c.serial, releases.c.manifest_sha256, releases.c.files).where(
            releases.c.version == version
        )
    ).first()
    if row is None:
        return None
    files: dict[str, list[dict[str, Any]]] = json.loads(row.files)
    sizes = {p: (len(fs), sum(int(f["size"]) for f in fs)) for p, fs in files.items()}
    return _ReleaseInfo(server_release_ref(version, int(row.serial), row.manifest_sha256), sizes)


def _release(conn: Connection, version: str, sha256: str | None = None) -> _ReleaseInfo | None:
    info = _release_cache.get(version)
    if info is None or (sha256 is not None and info.ref.manifest_sha256 != sha256):
        info = _load_release(conn, version)
        if info is None:
            return None
        with _lock:
            _release_cache[version] = info
    return info


def release_ref(conn: Connection, version: str) -> ReleaseRef | None:
    """The server ReleaseRef of a recorded release (cached), or None when not recorded."""
    info = _release(conn, version)
    return None if info is None else info.ref


def _window(text: str | None) -> MaintenanceWindow | None:
    if text is None:
        return None
    found = _window_cache.get(text)
    if found is None:
        found = MaintenanceWindow.model_validate(json.loads(text))
        with _lock:
            _window_cache[text] = found
    return found


def _steps(info: _ReleaseInfo, platform: str, current: Version | None) -> list[Step]:
    desired = info.ref.version
    cache_key = (str(desired), info.ref.serial, platform, None if current is None else str(current))
    found = _steps_cache.get(cache_key)
    if found is not None:
        return found
    count, size = info.sizes.get(platform, (0, 0))
    steps = describe_steps(
        desired,
        current,
        files=count,
        size=size,
        signature_of=str(desired),
        confirm=f"{desired} runs and heartbeats",
    )
    with _lock:
        _steps_cache[cache_key] = steps
    return steps


def _action(current: Version | None, desired: Version) -> Action:
    if current is None:
        return Action.INSTALL
    if current == desired:
        return Action.RECONFIGURE  # only the config differs (see _arrived)
    return Action.UPDATE if current < desired else Action.ROLLBACK


def _arrived(row: _OfferRow, report: Report, desired: Version) -> bool:
    """True when the device runs the release and, if the rollout manages config, its digest."""
    current = report.agent_version
    if current is None or current != desired:
        return False
    return row.config_digest is None or report.config_digest == row.config_digest


def _why(row: _OfferRow, current: Version | None, desired: Version) -> str:
    if current is not None and current == desired:
        return f"config of {desired} (rollout {row.name}, wave {row.wave})"
    return f"{current or 'nothing'} -> {desired} (rollout {row.name}, wave {row.wave})"


def _plan(
    device: str,
    *,
    row: Any,
    info: _ReleaseInfo,
    current: Version | None,
    action: Action,
    reason: str,
) -> DevicePlan:
    return DevicePlan.model_construct(
        device=device,
        group=row.group_name,
        platform=Platform(row.platform),
        current=current,
        desired=info.ref.version,
        action=action,
        reason=reason,
        wave=row.wave,
        rollout=row.name,
        steps=reconfigure_steps(info.ref.version)
        if action is Action.RECONFIGURE
        else _steps(info, row.platform, current),
        # a rollback plan (to the release it came from) leaves the config as it is
        config_digest=row.config_digest if str(info.ref.version) == row.release else None,
        config_diff=None,
    )


class _OfferRow(NamedTuple):
    rollout_id: int
    state: str
    wave: int
    rollback_to: str | None
    platform: str
    started_at: Any
    name: str
    group_name: str
    release: str
    release_sha256: str | None
    rollout_state: str
    priority: int
    maintenance_window: str | None
    component: str
    config_digest: str | None


_STATES = ", ".join(f"'{s}'" for s in _WANTED)
_ROLLOUT_STATES = ", ".join(f"'{s}'" for s in _LIVE)


@dataclass(frozen=True)
class _Sql:
    """The hot path's statements in the driver's parameter style, run on the DBAPI connection.

    SQLAlchemy Core costs about 100 µs per statement here; the driver alone
    about 13 µs (SQLite), and this runs on every check-in. The statements are
    plain SQL over columns declared in engine/store/schema.py.
    """

    select: str
    select_many: str
    take: str
    take_rollback: str
    sqlite: bool

    @staticmethod
    def of(conn: Connection) -> _Sql:
        """The statements for ``conn``'s dialect (built once per dialect)."""
        name = conn.dialect.name
        found = _SQL.get(name)
        if found is None:
            found = _SQL[name] = _Sql.build(name == "sqlite")
        return found

    @staticmethod
    def build(sqlite: bool) -> _Sql:
        """Statements with ``?`` (SQLite) or ``%s`` (psycopg) placeholders."""
        p = "?" if sqlite else "%s"
        columns = (
            "SELECT rd.rollout_id, rd.state, rd.wave, rd.rollback_to, rd.platform, "
            "rd.started_at, r.name, r.group_name, r.release, r.release_sha256, r.state, "
            "r.priority, r.maintenance_window, r.component, rd.config_digest"
        )
        where = f"AND rd.state IN ({_STATES}) AND r.state IN ({_ROLLOUT_STATES})"
        # ``+ 0``: see ``of_rollout`` in engine.rollouts._store (the device's index, always).
        joined = "FROM rollout_devices rd JOIN rollouts r ON r.id = rd.rollout_id + 0"
        # Many devices in one statement: a JSON array (SQLite) or an array (psycopg).
        many = "IN (SELECT value FROM json_each(?))" if sqlite else "= ANY(%s)"
        return _Sql(
            select=f"{columns} {joined} WHERE rd.device = {p} {where}",
            select_many=f"{columns}, rd.device {joined} WHERE rd.device {many} {where}",
            take=(
                f"UPDATE rollout_devices SET state = '{_TAKE[1].value}', "
                f"started_at = {p}, attempts = attempts + 1, from_version = {p}, "
                f"updated_at = {p} WHERE rollout_id + 0 = {p} AND device = {p} "
                f"AND state = '{_TAKE[0].value}'"
            ),
            take_rollback=(
                f"UPDATE rollout_devices SET state = '{_TAKE_ROLLBACK[1].value}', "
                f"started_at = {p}, updated_at = {p} WHERE rollout_id + 0 = {p} "
                f"AND device = {p} AND state = '{_TAKE_ROLLBACK[0].value}'"
            ),
            sqlite=sqlite,
        )

    def stamp(self, value: datetime) -> Any:
        """``value`` as the store keeps instants (see engine.store._types.UTCDateTime)."""
        return format_utc(value) if self.sqlite else value.astimezone(UTC)

    def instant(self, value: Any) -> datetime | None:
        """A stored instant read back by the driver, as an aware datetime."""
        if value is None or isinstance(value, datetime):
            return value
        return datetime.fromisoformat(value)


_SQL: dict[str, _Sql] = {}


def offer_rows(conn: Connection, devices: Sequence[str]) -> dict[str, list[tuple[Any, ...]]]:
    """Each device's open rollout rows (one query for all of ``devices``), by device id.

    A device without open rows is absent. Runs in a read transaction: the
    decision made from these rows is applied by a conditional UPDATE (``Take``).
    """
    sql = _Sql.of(conn)
    raw = conn.connection.driver_connection
    assert raw is not None
    if len(devices) == 1:
        rows = raw.execute(sql.select, (devices[0],)).fetchall()
        return {devices[0]: rows} if rows else {}
    if sql.sqlite:
        found = raw.execute(sql.select_many, (json.dumps(list(devices)),)).fetchall()
    else:
        found = raw.execute(sql.select_many, (list(devices),)).fetchall()
    by_device: dict[str, list[tuple[Any, ...]]] = {}
    for row in found:
        by_device.setdefault(row[-1], []).append(row[:-1])
    return by_device


@dataclass(frozen=True)
class Take:
    """A device taking its offer: one conditional UPDATE that must change exactly one row.

    A rollout state transition: committed durably before the device is answered.
    """

    statement: str
    params: tuple[Any, ...]

    def apply(self, conn: Connection) -> bool:
        """Run the UPDATE in ``conn``'s write transaction; False when the row moved meanwhile."""
        raw = conn.connection.driver_connection
        assert raw is not None
        return bool(raw.execute(self.statement, self.params).rowcount == 1)


@dataclass(frozen=True)
class Decision:
    """What a check-in gets: an offer, valid only once ``take`` (if any) changed its row."""

    offer: Offer | None
    take: Take | None = None
    #: a runtime rollout's offer (``CheckinResponse.runtime``), and the take it needs
    runtime: RuntimeOffer | None = None
    runtime_take: Take | None = None


_NOTHING = Decision(None)


def offer_for_device(conn: Connection, device: str, report: Report, now: datetime) -> Offer | None:
    """The plan to hand ``device`` at this check-in, or None (see ``decide_offer``).

    Reads and takes in the caller's (write) transaction.
    """
    decision = decide_offer(conn, device, offer_rows(conn, [device]).get(device, []), report, now)
    if decision.take is not None and not decision.take.apply(conn):
        return None  # another replica handed it out, or the controller took it back
    return decision.offer


def decide_offer(
    conn: Connection,
    device: str,
    rows: Sequence[tuple[Any, ...]],
    report: Report,
    now: datetime,
    *,
    runtime_failed: str | None = None,
) -> Decision:
    """The agent plan and the runtime release to hand ``device`` at this check-in.

    The agent's rows decide the plan (``_decide_agent``); the rows of runtime
    rollouts the runtime offer (``runtime_offers.decide_runtime_offer``; the
    highest priority, then newest, decides). ``runtime_failed`` is the runtime
    release the device's check-in reports it reverted or could not install.
    """
    if not rows:
        return _NOTHING
    agent_rows, runtime_rows = split_rows(rows)
    decision = _decide_agent(conn, device, agent_rows, report, now)
    if not runtime_rows:
        return decision
    sql = _Sql.of(conn)
    row = _OfferRow(*max(runtime_rows, key=lambda r: (r[11], r[0])))
    offer, takes = decide_runtime_offer(
        row,
        report,
        now,
        window=_window,
        in_window=in_window,
        started=sql.instant(row.started_at),
        failed_target=runtime_failed,
    )
    if offer is None:
        return decision
    take = None
    if takes:
        stamp = sql.stamp(now)
        take = Take(sql.take, (stamp, report.runtime_version, stamp, row.rollout_id, device))
    return dataclasses.replace(decision, runtime=offer, runtime_take=take)


def _decide_agent(
    conn: Connection, device: str, rows: Sequence[tuple[Any, ...]], report: Report, now: datetime
) -> Decision:
    """The plan to hand ``device`` at this check-in given its open agent rollout ``rows``.

    ``report`` is what the device just said (already stored or not) and ``now``
    the server's time, which must be the time the report is stored with. A
    device gets:

    - its update when the controller offered it (its wave is open and a
      ``max_parallel`` slot is free), its rollout is active or completed, and
      its group's maintenance window is open at ``now``; the device's row
      moves from offered to in_progress (the decision's ``take``);
    - the same plan again while it is in progress and has not reported a
      failure (a lost answer must not strand it);
    - a rollback to the release it came from when its rollout halted, also
      only inside the window (a ``take`` too);
    - a rollback to the release it came from when the performance policy failed
      it (``regressed``), at every check-in inside the window until it reports
      that release (like an update in progress, a lost answer must not strand it);
    - nothing otherwise: pinned and excluded devices, paused, aborted and
      superseded rollouts, closed windows. When the device is in several
      live rollouts, the one of the highest group priority (then the newest)
      decides.

    ``conn`` is only read (release rows, cached).
    """
    if not rows:
        return _NOTHING
    sql = _Sql.of(conn)
    row = _OfferRow(*max(rows, key=lambda r: (r[11], r[0])))
    state = row.state
    rollout_state = row.rollout_state
    current = report.agent_version
    if state == DeviceState.OFFERED.value:
        if rollout_state not in _OFFERING:
            return _NOTHING
        if not in_window(_window(row.maintenance_window), now):
            return _NOTHING
        info = _release(conn, row.release, row.release_sha256)
        if info is None:
            return _NOTHING
        desired = info.ref.version
        if _arrived(row, report, desired):
            return _NOTHING  # already there: the controller marks it succeeded
        stamp = sql.stamp(now)
        take = Take(
            sql.take,
            (stamp, None if current is None else str(current), stamp, row.rollout_id, device),
        )
        action = _action(current, desired)
        reason = _why(row, current, desired)
        plan = _plan(device, row=row, info=info, current=current, action=action, reason=reason)
        return Decision(Offer(plan, info.ref), take)
    if state == DeviceState.IN_PROGRESS.value:
        if rollout_state not in (*_OFFERING, RolloutState.PAUSED.value):
            return _NOTHING
        started = sql.instant(row.started_at)
        finished = started is None or report.last_seen > started
        if report.last_result in FAILURE_RESULTS and finished:
            return _NOTHING  # it failed; the controller decides on a retry
        info = _release(conn, row.release, row.release_sha256)
        if info is None:
            return _NOTHING
        desired = info.ref.version
        if _arrived(row, report, desired):
            return _NOTHING  # installed; the controller waits for its heartbeat
        action = _action(current, desired)
        reason = _why(row, current, desired)
        plan = _plan(device, row=row, info=info, current=current, action=action, reason=reason)
        return Decision(Offer(plan, info.ref))
    if state == DeviceState.ROLLBACK.value:
        if rollout_state != RolloutState.HALTED.value or row.rollback_to is None:
            return _NOTHING
        if not in_window(_window(row.maintenance_window), now):
            return _NOTHING
        info = _release(conn, row.rollback_to)
        if info is None:
            return _NOTHING
        stamp = sql.stamp(now)
        take = Take(sql.take_rollback, (stamp, stamp, row.rollout_id, device))
        reason = f"rollout {row.name} halted: back to {info.ref.version}"
        plan = _plan(
            device, row=row, info=info, current=current, action=Action.ROLLBACK, reason=reason
        )
        return Decision(Offer(plan, info.ref), take)
    if state == DeviceState.REGRESSED.value:
        if row.rollback_to is None or not in_window(_window(row.maintenance_window), now):
            return _NOTHING
        info = _release(conn, row.rollback_to)
        if info is None or (current is not None and current == info.ref.version):
            return _NOTHING
        reason = (
            f"rollout {row.name}: {row.release} exceeded the performance policy: "
            f"back to {info.ref.version}"
        )
        plan = _plan(
            device, row=row, info=info, current=current, action=Action.ROLLBACK, reason=reason
        )
        return Decision(Offer(plan, info.ref))
    return _NOTHING
