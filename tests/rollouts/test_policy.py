"""The controller's pure decisions, case by case from tables (no store, no clock)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from engine.rollouts.model import DeviceState, RolloutState, Timings
from engine.rollouts.policy import (
    DeviceObservation,
    GateOutcome,
    GateView,
    WaveCounts,
    WaveStateCount,
    WaveStep,
    choose_offers,
    count_waves,
    gate_soaked_at,
    judge_device,
    judge_gates,
    retry_after,
    rollback_version,
    shown_reason,
    tripped,
    wave_step,
)
from engine.rollouts.transitions import DeviceEvent
from fleetbase.version import Version
from inventory.models import RolloutPolicy

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)
TIMEOUT = timedelta(minutes=15)
TARGET = Version("3.0.1")

#: A device that took the plan at T0 and has said nothing since.
TOOK = DeviceObservation(
    state=DeviceState.IN_PROGRESS,
    started_at=T0,
    attempts=1,
    rollback_to=None,
    agent_version="3.0.0",
    last_result=None,
    last_seen=T0 - MIN,
    agent_running=True,
    heartbeat_version=None,
    heartbeat_at=None,
)
ROLLING_BACK = replace(
    TOOK, state=DeviceState.ROLLING_BACK, agent_version="3.0.1", rollback_to="3.0.0"
)

S, F, TO = DeviceEvent.SUCCEED, DeviceEvent.FAIL, DeviceEvent.TIME_OUT

#: A device on the target taking a config-only change (digest ``new`` wanted).
RECONFIGURING = replace(
    TOOK, agent_version="3.0.1", config_digest="sha256:old", target_config="sha256:new"
)

# (case, observation changes, minutes after T0, expected event or None, reason part)
JUDGE_CASES: list[tuple[str, DeviceObservation, int, DeviceEvent | None, str]] = [
    (
        "config wanted, committed and heartbeating, new digest reported",
        replace(
            RECONFIGURING,
            last_result="committed",
            config_digest="sha256:new",
            heartbeat_version="3.0.1",
            heartbeat_at=T0 + MIN,
        ),
        2,
        S,
        "",
    ),
    (
        "config wanted, committed and heartbeating, still the old digest",
        replace(
            RECONFIGURING,
            last_result="committed",
            heartbeat_version="3.0.1",
            heartbeat_at=T0 + MIN,
            last_seen=T0 + MIN,
        ),
        2,
        None,
        "",
    ),
    (
        "config wanted, rolled back to the old digest on the same release",
        replace(RECONFIGURING, last_result="rolled_back", last_seen=T0 + MIN),
        2,
        F,
        "attempt 1: the device reported rolled_back",
    ),
    ("silent, within timeout", TOOK, 5, None, ""),
    ("silent, timeout reached", TOOK, 15, TO, "attempt 1: no outcome within 0:15:00"),
    (
        "target, committed, heartbeat after start",
        replace(
            TOOK,
            agent_version="3.0.1",
            last_result="committed",
            heartbeat_version="3.0.1",
            heartbeat_at=T0 + MIN,
        ),
        2,
        S,
        "",
    ),
    (
        "target, noop, report after start says running",
        replace(TOOK, agent_version="3.0.1", last_result="noop", last_seen=T0 + MIN),
        2,
        S,
        "",
    ),
    (
        "target, committed, but heartbeat from before the plan",
        replace(
            TOOK,
            agent_version="3.0.1",
            last_result="committed",
            heartbeat_version="3.0.1",
            heartbeat_at=T0 - MIN,
            agent_running=False,
            last_seen=T0 + MIN,
        ),
        2,
        None,
        "",
    ),
    (
        "target, committed, heartbeat of another version",
        replace(
            TOOK,
            agent_version="3.0.1",
            last_result="committed",
            heartbeat_version="3.0.0",
            heartbeat_at=T0 + MIN,
            agent_running=None,
        ),
        2,
        None,
        "",
    ),
    (
        "files written but result not committed",
        replace(TOOK, agent_version="3.0.1", last_result=None, last_seen=T0 + MIN),
        2,
        None,
        "",
    ),
    (
        "reported rolled_back after start",
        replace(TOOK, last_result="rolled_back", last_seen=T0 + MIN),
        2,
        F,
        "attempt 1: the device reported rolled_back",
    ),
    (
        "reported refused after start",
        replace(TOOK, last_result="refused", last_seen=T0 + MIN, attempts=2),
        2,
        F,
        "attempt 2: the device reported refused",
    ),
    (
        "failure reported before the plan does not count",
        replace(TOOK, last_result="failed", last_seen=T0 - MIN),
        2,
        None,
        "",
    ),
    (
        "failure result while on target is not a failure",
        replace(TOOK, agent_version="3.0.1", last_result="failed", last_seen=T0 + MIN),
        2,
        None,
        "",
    ),
    (
        "never started (no started_at): timed out at once",
        replace(TOOK, started_at=None),
        0,
        TO,
        "no outcome",
    ),
    (
        "rollback: report of the old release after start",
        replace(ROLLING_BACK, agent_version="3.0.0", last_seen=T0 + MIN),
        2,
        S,
        "",
    ),
    (
        "rollback: old release reported before the rollback started",
        replace(ROLLING_BACK, agent_version="3.0.0", last_seen=T0 - MIN),
        2,
        None,
        "",
    ),
    (
        "rollback: reported failed on another version",
        replace(ROLLING_BACK, last_result="failed", last_seen=T0 + MIN),
        2,
        F,
        "rollback to 3.0.0 reported failed",
    ),
    ("rollback: silent past timeout", ROLLING_BACK, 20, TO, "no report of 3.0.0 within 0:15:00"),
    ("rollback: silent within timeout", ROLLING_BACK, 10, None, ""),
]


@pytest.mark.parametrize(
    ("seen", "minutes", "event", "reason"),
    [c[1:] for c in JUDGE_CASES],
    ids=[c[0] for c in JUDGE_CASES],
)
def test_judge_device(
    seen: DeviceObservation, minutes: int, event: DeviceEvent | None, reason: str
) -> None:
    """A device's outcome follows from its report, heartbeat and the time since it took the plan."""
    verdict = judge_device(seen, TARGET, TIMEOUT, T0 + minutes * MIN)
    assert (verdict.event if verdict else None) is event
    if verdict is not None:
        assert reason in (verdict.reason or "")
        assert (verdict.reason is None) is (event is S)


# (rollout state, attempts so far, expected retry delay or None, reason suffix)
RETRY_CASES: list[tuple[RolloutState, int, timedelta | None, str]] = [
    (RolloutState.ACTIVE, 1, MIN, "; retry at 2026-11-27T10:01:00Z"),
    (RolloutState.ACTIVE, 2, 2 * MIN, "; retry at 2026-11-27T10:02:00Z"),
    (RolloutState.ACTIVE, 3, None, "; no retries left"),
    (RolloutState.PAUSED, 1, None, ""),
    (RolloutState.HALTED, 1, None, ""),
    (RolloutState.COMPLETED, 1, None, ""),
]


@pytest.mark.parametrize(("state", "attempts", "delay", "suffix"), RETRY_CASES)
def test_retry_after(
    state: RolloutState, attempts: int, delay: timedelta | None, suffix: str
) -> None:
    """Only an active rollout retries, with doubling backoff, up to max_attempts attempts."""
    retry_at, reason = retry_after("why", attempts, state, Timings(), T0)
    assert retry_at == (None if delay is None else T0 + delay)
    assert reason == "why" + suffix


@pytest.mark.parametrize(
    ("from_version", "back"),
    [("3.0.0", "3.0.0"), (None, None), ("3.0.1", None), ("not a version", None)],
)
def test_rollback_version(from_version: str | None, back: str | None) -> None:
    """A halted rollout sends a device back to where it came from, unless that is nowhere."""
    found = rollback_version(from_version, TARGET)
    assert (str(found) if found else None) == back


def _policy(**values: Any) -> RolloutPolicy:
    return RolloutPolicy.model_validate({"waves": [10, 50, 100], **values})


def _wc(**values: int) -> WaveCounts:
    return WaveCounts(**values)


# (case, wave counts, current wave, policy, tripped wave or None)
TRIP_CASES: list[tuple[str, list[WaveCounts], int, RolloutPolicy, int | None]] = [
    ("no failure", [_wc(total=10, succeeded=10)], 0, _policy(), None),
    ("1 of 19 at 5%: 5.3% trips", [_wc(total=19, failed=1)], 0, _policy(), 0),
    ("1 of 20 at 5%: exactly 5% does not", [_wc(total=20, failed=1)], 0, _policy(), None),
    ("any failure at 0%", [_wc(total=1000, failed=1)], 0, _policy(max_failure_rate=0.0), 0),
    (
        "closed wave not looked at",
        [_wc(total=10, succeeded=10), _wc(total=2, failed=2)],
        0,
        _policy(),
        None,
    ),
    (
        "earlier open wave trips first",
        [_wc(total=2, failed=1), _wc(total=2, failed=2)],
        1,
        _policy(),
        0,
    ),
    ("empty wave", [_wc()], 0, _policy(max_failure_rate=0.0), None),
]


@pytest.mark.parametrize(
    ("waves", "current", "policy", "wave"),
    [c[1:] for c in TRIP_CASES],
    ids=[c[0] for c in TRIP_CASES],
)
def test_tripped(
    waves: list[WaveCounts], current: int, policy: RolloutPolicy, wave: int | None
) -> None:
    """A rollout trips when an open wave's failure rate is above max_failure_rate."""
    trip = tripped(waves, current, policy)
    assert (trip.wave if trip else None) == wave
    if trip is not None:
        assert trip.reason.startswith(f"wave {wave}: ")
        assert "above max_failure_rate" in trip.reason


def test_count_waves() -> None:
    """Grouped counts become per-wave totals; excluded states and unknown waves are left out."""
    rows = [
        WaveStateCount(0, DeviceState.SUCCEEDED, 3, 2, 0, 0),
        WaveStateCount(0, DeviceState.FAILED, 2, 2, 1, 1),  # one failed before the last resume
        WaveStateCount(0, DeviceState.TIMED_OUT, 1, 1, 1, 0),
        WaveStateCount(0, DeviceState.OFFERED, 1, 0, 0, 0),
        WaveStateCount(0, DeviceState.IN_PROGRESS, 2, 2, 0, 0),
        WaveStateCount(0, DeviceState.EXCLUDED, 5, 0, 0, 0),
        WaveStateCount(0, DeviceState.CANCELLED, 1, 1, 0, 0),
        WaveStateCount(1, DeviceState.PENDING, 4, 0, 0, 0),
        WaveStateCount(7, DeviceState.PENDING, 4, 0, 0, 0),
    ]
    w0, w1 = count_waves(rows, 2)
    assert w0 == WaveCounts(total=9, succeeded=3, failed=2, attempted=7, busy=3, waiting_retry=1)
    assert w1 == WaveCounts(total=4)
    assert w1.success_rate == 0.0 and WaveCounts().success_rate == 1.0


SOAK = timedelta(minutes=30)
# (case, wave counts, current, met_at (minutes from T0) or None, now, step, met_at after)
WAVE_CASES: list[tuple[str, list[WaveCounts], int, int | None, int, WaveStep, int | None]] = [
    (
        "below goal",
        [_wc(total=10, succeeded=9, attempted=10)],
        0,
        None,
        0,
        WaveStep.BELOW_GOAL,
        None,
    ),
    (
        "dropped below goal: soak forgotten",
        [_wc(total=10, succeeded=9, attempted=10)],
        0,
        -5,
        0,
        WaveStep.BELOW_GOAL,
        None,
    ),
    (
        "goal met now: soak starts",
        [_wc(total=10, succeeded=10, attempted=10), _wc(total=10)],
        0,
        None,
        0,
        WaveStep.SOAKING,
        0,
    ),
    (
        "soaking",
        [_wc(total=10, succeeded=10, attempted=10), _wc(total=10)],
        0,
        -29,
        0,
        WaveStep.SOAKING,
        -29,
    ),
    (
        "soaked: next wave",
        [_wc(total=10, succeeded=10, attempted=10), _wc(total=10)],
        0,
        -30,
        0,
        WaveStep.OPEN_NEXT,
        -30,
    ),
    (
        "nothing changed in the wave: no soak",
        [_wc(total=10, succeeded=10), _wc(total=10)],
        0,
        None,
        0,
        WaveStep.OPEN_NEXT,
        0,
    ),
    (
        "last wave met, a device busy",
        [_wc(total=1, succeeded=1), _wc(total=1, succeeded=1), _wc(total=10, succeeded=10, busy=1)],
        2,
        None,
        0,
        WaveStep.SOAKING,
        0,
    ),
    (
        "last wave met, a retry pending in wave 0",
        [_wc(total=20, succeeded=19, waiting_retry=1), _wc(), _wc(total=1, succeeded=1)],
        2,
        None,
        0,
        WaveStep.SOAKING,
        0,
    ),
    (
        "last wave met, nothing busy: complete",
        [_wc(), _wc(), _wc(total=4, succeeded=4, attempted=4)],
        2,
        -1,
        0,
        WaveStep.COMPLETE,
        -1,
    ),
]


@pytest.mark.parametrize(
    ("waves", "current", "met", "now", "step", "met_after"),
    [c[1:] for c in WAVE_CASES],
    ids=[c[0] for c in WAVE_CASES],
)
def test_wave_step(
    waves: list[WaveCounts],
    current: int,
    met: int | None,
    now: int,
    step: WaveStep,
    met_after: int | None,
) -> None:
    """A wave opens the next after holding min_success_rate for soak; the last one completes."""
    policy = _policy(min_success_rate=0.95, soak="30m")
    at = None if met is None else T0 + met * MIN
    decision = wave_step(waves, current, at, policy, T0 + now * MIN)
    assert decision.step is step
    assert decision.met_at == (None if met_after is None else T0 + met_after * MIN)


def _gate(state: RolloutState, soaked: int | None = None, reason: str | None = None) -> GateView:
    return GateView("canary@3.0.1", state, reason, None if soaked is None else T0 + soaked * MIN)


# (case, gates, outcome, reason)
GATE_CASES: list[tuple[str, list[GateView], GateOutcome, str]] = [
    ("no gates found", [], GateOutcome.OPEN, "the gate rollouts completed; wave 0 opened"),
    (
        "completed, nothing to soak",
        [_gate(RolloutState.COMPLETED)],
        GateOutcome.OPEN,
        "canary@3.0.1 completed; wave 0 opened",
    ),
    (
        "completed and soaked",
        [_gate(RolloutState.COMPLETED, soaked=0)],
        GateOutcome.OPEN,
        "canary@3.0.1 completed; wave 0 opened",
    ),
    (
        "completed, soaking",
        [_gate(RolloutState.COMPLETED, soaked=10)],
        GateOutcome.WAIT,
        "waiting for canary@3.0.1 to soak until 2026-11-27T10:10:00Z",
    ),
    ("active", [_gate(RolloutState.ACTIVE)], GateOutcome.WAIT, "waiting for canary@3.0.1"),
    ("waiting", [_gate(RolloutState.WAITING)], GateOutcome.WAIT, "waiting for canary@3.0.1"),
    (
        "paused",
        [_gate(RolloutState.PAUSED, reason="paused by operator")],
        GateOutcome.WAIT,
        "waiting for canary@3.0.1 (paused: paused by operator)",
    ),
    (
        "halted",
        [_gate(RolloutState.HALTED, reason="wave 0: 2 of 2 devices failed")],
        GateOutcome.HALT,
        "canary@3.0.1 halted: wave 0: 2 of 2 devices failed",
    ),
    (
        "aborted without a reason",
        [_gate(RolloutState.ABORTED)],
        GateOutcome.HALT,
        "canary@3.0.1 aborted: no reason recorded",
    ),
    (
        "one superseded among completed: halts",
        [_gate(RolloutState.COMPLETED), _gate(RolloutState.SUPERSEDED, reason="x")],
        GateOutcome.HALT,
        "canary@3.0.1 superseded: x",
    ),
]


@pytest.mark.parametrize(
    ("gates", "outcome", "reason"),
    [c[1:] for c in GATE_CASES],
    ids=[c[0] for c in GATE_CASES],
)
def test_judge_gates(gates: list[GateView], outcome: GateOutcome, reason: str) -> None:
    """A waiting rollout opens once every gate completed and soaked; a failed gate halts it."""
    decision = judge_gates(gates, T0)
    assert decision.outcome is outcome
    assert decision.reason == reason


@pytest.mark.parametrize(
    ("finished", "attempted", "soaked"),
    [(T0, True, T0 + SOAK), (None, True, T0 + SOAK), (T0, False, None)],
)
def test_gate_soaked_at(
    finished: datetime | None, attempted: bool, soaked: datetime | None
) -> None:
    """A gate soaks for its own soak after it completed, unless it changed no device."""
    assert gate_soaked_at(finished, SOAK, attempted, T0) == soaked


# (case, candidates, slots, expected)
OFFER_CASES: list[tuple[str, list[tuple[str, str | None]], int, list[tuple[str, DeviceEvent]]]] = [
    ("no slots", [("a", "3.0.0")], 0, []),
    (
        "fills the slots in order",
        [("a", "3.0.0"), ("b", None), ("c", "3.0.0")],
        2,
        [
            ("a", DeviceEvent.OFFER),
            ("b", DeviceEvent.OFFER),
        ],
    ),
    (
        "already on the release: succeeded, no slot used",
        [("a", "3.0.1"), ("b", "3.0.0")],
        1,
        [
            ("a", DeviceEvent.ON_RELEASE),
            ("b", DeviceEvent.OFFER),
        ],
    ),
    (
        "stops at the first device without a slot",
        [("a", "3.0.0"), ("b", "x"), ("c", "3.0.1")],
        1,
        [
            ("a", DeviceEvent.OFFER),
        ],
    ),
]


@pytest.mark.parametrize(
    ("candidates", "slots", "expected"),
    [c[1:] for c in OFFER_CASES],
    ids=[c[0] for c in OFFER_CASES],
)
def test_choose_offers(
    candidates: list[tuple[str, str | None]], slots: int, expected: list[tuple[str, DeviceEvent]]
) -> None:
    """Free slots go to pending devices in order; one already on the release just succeeds."""
    assert choose_offers(candidates, TARGET, slots) == expected


_FAILED_REASON = "attempt 1: the device reported rolled_back; retry at 2026-11-27T10:05:00Z"


@pytest.mark.parametrize(
    ("rollout", "now", "expected"),
    [
        (RolloutState.ACTIVE, T0, _FAILED_REASON),
        (
            RolloutState.ACTIVE,
            T0 + 10 * MIN,
            "attempt 1: the device reported rolled_back; retry due (offered when the device is "
            "seen and a slot is free)",
        ),
        (
            RolloutState.PAUSED,
            T0,
            "attempt 1: the device reported rolled_back; retry held: the rollout is paused",
        ),
        (
            RolloutState.HALTED,
            T0,
            "attempt 1: the device reported rolled_back; not retried: the rollout is halted",
        ),
        (
            RolloutState.ABORTED,
            T0 + 10 * MIN,
            "attempt 1: the device reported rolled_back; not retried: the rollout is aborted",
        ),
    ],
)
def test_shown_reason_never_promises_a_retry_that_will_not_come(
    rollout: RolloutState, now: datetime, expected: str
) -> None:
    """A stored "retry at" reason is rewritten for the rollout's state and the clock."""
    retry_at = T0 + 5 * MIN
    assert shown_reason(_FAILED_REASON, retry_at=retry_at, rollout=rollout, now=now) == expected


def test_shown_reason_leaves_other_reasons_alone() -> None:
    """Reasons without a retry promise (or none) are shown as stored."""
    for reason in (None, "pinned to 3.0.0", "attempt 3: no outcome; no retries left"):
        assert shown_reason(reason, retry_at=None, rollout=RolloutState.HALTED, now=T0) == reason
