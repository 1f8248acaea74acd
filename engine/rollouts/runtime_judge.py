"""Judging devices of a runtime rollout: did the device's runtime move to the release?

A runtime rollout (``component: runtime``) moves the device's runtime, not its
agent, so its devices are judged on what the runtime reports at check-in:
succeeded once a check-in after taking the offer comes from the target
runtime (``runtime_version``) and says the supervisor kept it (``runtime_update``
confirmed for the target: a runtime that checked in once may still be reverted
when its supervisor dies before keeping it), failed once the runtime that runs
reports that it reverted or could not install the target (``runtime_update``),
timed out otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, select

from engine.rollouts.model import DeviceState
from engine.rollouts.policy import Verdict, parse_version
from engine.rollouts.transitions import DeviceEvent
from engine.store.schema import reports, rollout_devices
from fleetbase.version import Version

__all__ = [
    "FAILED_RUNTIME_RESULTS",
    "RuntimeObservation",
    "judge_runtime_device",
    "runtime_devices_to_judge",
]

#: ``runtime_update.result`` values that mean the device stayed on (or went back to) its
#: previous runtime.
FAILED_RUNTIME_RESULTS = frozenset({"reverted", "failed"})
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class RuntimeObservation:
    """What the store knows of a device that took a runtime offer: its row and report."""

    device: str
    state: DeviceState
    started_at: datetime | None
    attempts: int
    last_seen: datetime | None
    runtime_version: str | None
    runtime_target: str | None
    runtime_result: str | None
    runtime_detail: str | None


def judge_runtime_device(
    seen: RuntimeObservation, target: Version, update_timeout: timedelta, now: datetime
) -> Verdict | None:
    """The outcome of a device's runtime update so far, or None while it is open."""
    started = seen.started_at or _EPOCH
    seen_after = seen.last_seen is not None and seen.last_seen > started
    running = parse_version(seen.runtime_version)
    tried = parse_version(seen.runtime_target)
    confirmed = seen.runtime_result == "confirmed" and tried is not None and tried == target
    if seen_after and running is not None and running == target and confirmed:
        return Verdict(DeviceEvent.SUCCEED)
    if (
        seen_after
        and tried is not None
        and tried == target
        and seen.runtime_result in FAILED_RUNTIME_RESULTS
    ):
        why = f"attempt {seen.attempts}: runtime {target} {seen.runtime_result}"
        if seen.runtime_detail:
            why += f": {seen.runtime_detail}"
        return Verdict(DeviceEvent.FAIL, why[:2000])
    if started + update_timeout <= now:
        why = f"attempt {seen.attempts}: no check-in of runtime {target} within {update_timeout}"
        return Verdict(DeviceEvent.TIME_OUT, why)
    return None


def runtime_devices_to_judge(conn: Connection, rollout_id: int) -> list[RuntimeObservation]:
    """Devices of a runtime rollout that took its offer, with their stored report."""
    rd = rollout_devices
    rows = conn.execute(
        select(
            rd.c.device,
            rd.c.state,
            rd.c.started_at,
            rd.c.attempts,
            reports.c.last_seen,
            reports.c.runtime_version,
            reports.c.runtime_target,
            reports.c.runtime_result,
            reports.c.runtime_detail,
        )
        .select_from(rd.outerjoin(reports, reports.c.device == rd.c.device))
        .where(rd.c.rollout_id == rollout_id, rd.c.state == DeviceState.IN_PROGRESS.value)
    )
    return [
        RuntimeObservation(
            device=row.device,
            state=DeviceState(row.state),
            started_at=row.started_at,
            attempts=int(row.attempts),
            last_seen=row.last_seen,
            runtime_version=row.runtime_version,
            runtime_target=row.runtime_target,
            runtime_result=row.runtime_result,
            runtime_detail=row.runtime_detail,
        )
        for row in rows
    ]
