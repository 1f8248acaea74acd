"""Judging a device of a runtime rollout from its check-ins, case by case."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from engine.rollouts.model import DeviceState
from engine.rollouts.runtime_judge import RuntimeObservation, judge_runtime_device
from engine.rollouts.transitions import DeviceEvent
from fleetbase.version import Version

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
TARGET = Version("0.2.0")
TIMEOUT = timedelta(minutes=15)


def _seen(
    *,
    seen: datetime | None = T0 + timedelta(seconds=5),
    version: str | None = "0.1.0",
    target: str | None = None,
    result: str | None = None,
    detail: str | None = None,
) -> RuntimeObservation:
    return RuntimeObservation(
        device="d", state=DeviceState.IN_PROGRESS, started_at=T0, attempts=1, last_seen=seen,
        runtime_version=version, runtime_target=target, runtime_result=result,
        runtime_detail=detail,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("seen", "now", "event", "reason"),
    [
        # the new runtime checks in and its supervisor kept it
        (
            _seen(version="0.2.0", target="0.2.0", result="confirmed"),
            T0 + timedelta(seconds=6),
            DeviceEvent.SUCCEED,
            None,
        ),
        # it checked in, but the supervisor has not kept it yet (it may still revert)
        (_seen(version="0.2.0"), T0 + timedelta(seconds=6), None, None),
        # a check-in of the target at the instant of the take does not count (not after it)
        (
            _seen(seen=T0, version="0.2.0", target="0.2.0", result="confirmed"),
            T0 + timedelta(seconds=6),
            None,
            None,
        ),
        # the old runtime says the supervisor reverted the target
        (
            _seen(target="0.2.0", result="reverted", detail="exited with 3"),
            T0 + timedelta(seconds=6),
            DeviceEvent.FAIL,
            "attempt 1: runtime 0.2.0 reverted: exited with 3",
        ),
        # ... or that it could not install it
        (
            _seen(target="0.2.0", result="failed", detail="pip failed"),
            T0 + timedelta(seconds=6),
            DeviceEvent.FAIL,
            "attempt 1: runtime 0.2.0 failed: pip failed",
        ),
        # a revert of another release is not this rollout's business
        (_seen(target="0.3.0", result="reverted"), T0 + timedelta(seconds=6), None, None),
        # still installing
        (_seen(), T0 + timedelta(seconds=6), None, None),
        # silent for update_timeout
        (
            _seen(seen=None),
            T0 + TIMEOUT,
            DeviceEvent.TIME_OUT,
            "attempt 1: no check-in of runtime 0.2.0 within 0:15:00",
        ),
    ],
)
def test_judge_runtime_device(
    seen: RuntimeObservation, now: datetime, event: DeviceEvent | None, reason: str | None
) -> None:
    verdict = judge_runtime_device(seen, TARGET, TIMEOUT, now)
    if event is None:
        assert verdict is None
    else:
        assert verdict is not None
        assert (verdict.event, verdict.reason) == (event, reason)
