"""The controller's decisions as pure functions: no database, no clock, no IO.

- :func:`judge_device`: did a device that took a plan succeed, fail or time out?
- :func:`retry_after` and :func:`rollback_version`: what follows a failure or a halt.
- :func:`halts_release`: does a halt send every rollout of the release back?
- :func:`count_waves` and :func:`tripped`: does a wave's failure rate trip the rollout?
- :func:`wave_step`: does the current wave hold its goal, soak, open the next, complete?
- :func:`judge_gates`: may a waiting rollout (``rollout.after``) open its first wave?
- :func:`choose_offers`: which pending devices get the free slots.
- :func:`judge_performance`: did a device's agent get slower or bigger than
  ``max_cpu_increase`` / ``max_rss_increase`` allow?

The controller reads typed rows from ``_store``, asks these functions, and
writes the answers through the transition tables. docs/rollouts.md has the rules.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from engine.rollouts.model import (
    ACTIVE_DEVICE_STATES,
    FAILED_STATES,
    NOT_COUNTED_STATES,
    DeviceState,
    RolloutState,
    Timings,
)
from engine.rollouts.transitions import DeviceEvent
from fleetbase.version import Version, VersionError
from inventory.models import FailurePolicy, RollbackScope, RolloutPolicy

__all__ = [
    "FAILURE_RESULTS",
    "MIN_CPU_POINTS",
    "MIN_PERFORMANCE_SAMPLES",
    "MIN_RSS_BYTES",
    "SUCCESS_RESULTS",
    "DeviceObservation",
    "GateDecision",
    "GateOutcome",
    "GateView",
    "Regression",
    "Trip",
    "Usage",
    "Verdict",
    "WaveCounts",
    "WaveDecision",
    "WaveStateCount",
    "WaveStep",
    "choose_offers",
    "count_waves",
    "gate_soaked_at",
    "halts_release",
    "judge_device",
    "judge_gates",
    "judge_performance",
    "parse_version",
    "retry_after",
    "rollback_version",
    "shown_reason",
    "tripped",
    "wave_step",
]

#: ``last_result`` values that mean the device's transaction did not end on its target.
FAILURE_RESULTS = frozenset({"rolled_back", "failed", "refused"})
#: ``last_result`` values that mean the device runs its target after a good transaction.
SUCCESS_RESULTS = frozenset({"committed", "noop"})
#: Gate states that mean the gated rollout will never start.
_GATE_FAILED = frozenset({RolloutState.HALTED, RolloutState.ABORTED, RolloutState.SUPERSEDED})
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _stamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_version(text: str | None) -> Version | None:
    """``text`` as a Version, or None when absent or not a version."""
    if text is None:
        return None
    try:
        return Version(text)
    except VersionError:
        return None


# -- one device ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceObservation:
    """What the store knows of a device that took a plan: its row, report and heartbeat."""

    state: DeviceState  # in_progress or rolling_back
    started_at: datetime | None
    attempts: int
    rollback_to: str | None
    agent_version: str | None
    last_result: str | None
    last_seen: datetime | None
    agent_running: bool | None
    heartbeat_version: str | None
    heartbeat_at: datetime | None
    #: the config digest the device reports, and the one its rollout wants (None: any)
    config_digest: str | None = None
    target_config: str | None = None


@dataclass(frozen=True)
class Verdict:
    """The outcome of a device's attempt: succeed, fail or time_out, and why."""

    event: DeviceEvent
    reason: str | None = None


def judge_device(
    seen: DeviceObservation, target: Version, update_timeout: timedelta, now: datetime
) -> Verdict | None:
    """The outcome of a device's update (or rollback) so far, or None while it is open.

    Succeeded needs the target in the report, a committed (or noop) result and
    a heartbeat of the target (or a report that the agent runs) after the
    device took the plan (and, when the rollout manages config, the target config
    digest in the report); failed needs a failed result reported after that on
    another version or config; timed out is neither within ``update_timeout``. A rollback
    succeeds when a report after taking it shows ``rollback_to``.
    """
    started = seen.started_at or _EPOCH
    seen_after = seen.last_seen is not None and seen.last_seen > started
    running = parse_version(seen.agent_version)
    failed_report = seen_after and seen.last_result in FAILURE_RESULTS
    timed_out = started + update_timeout <= now
    if seen.state is DeviceState.ROLLING_BACK:
        back = parse_version(seen.rollback_to)
        if seen_after and running is not None and running == back:
            return Verdict(DeviceEvent.SUCCEED)
        if failed_report and running != back:
            return Verdict(DeviceEvent.FAIL, f"rollback to {back} reported {seen.last_result}")
        if timed_out:
            return Verdict(DeviceEvent.TIME_OUT, f"no report of {back} within {update_timeout}")
        return None
    healthy = (
        seen.heartbeat_version is not None
        and parse_version(seen.heartbeat_version) == target
        and seen.heartbeat_at is not None
        and seen.heartbeat_at > started
    ) or (seen_after and seen.agent_running is True)
    on_release = running is not None and running == target
    config_ok = seen.target_config is None or seen.config_digest == seen.target_config
    on_target = on_release and config_ok
    if on_target and seen.last_result in SUCCESS_RESULTS and healthy:
        return Verdict(DeviceEvent.SUCCEED)
    if failed_report and not on_target:
        why = f"attempt {seen.attempts}: the device reported {seen.last_result}"
        return Verdict(DeviceEvent.FAIL, why)
    if timed_out:
        why = f"attempt {seen.attempts}: no outcome within {update_timeout} of taking the plan"
        return Verdict(DeviceEvent.TIME_OUT, why)
    return None


def retry_after(
    reason: str, attempts: int, rollout: RolloutState, timings: Timings, now: datetime
) -> tuple[datetime | None, str]:
    """When a failed attempt is retried (None: never) and the reason completed with it.

    Only an active rollout retries, up to ``max_attempts`` attempts with
    exponential backoff.
    """
    if rollout is RolloutState.ACTIVE and attempts < timings.max_attempts:
        retry_at = now + timings.retry_delay(attempts)
        return retry_at, f"{reason}; retry at {_stamp(retry_at)}"
    return None, reason + ("; no retries left" if rollout is RolloutState.ACTIVE else "")


def rollback_version(from_version: str | None, target: Version) -> Version | None:
    """The release a device that took ``target`` goes back to when its rollout halts.

    None when there is nothing to go back to (it had no agent, or came from
    the target itself): it stays succeeded.
    """
    back = parse_version(from_version)
    return None if back is None or back == target else back


def halts_release(failure: FailurePolicy, entered: RolloutState) -> bool:
    """Whether a rollout that just entered ``entered`` halts every rollout of its release.

    Only a halt (not a pause) with ``on_failure: {rollback: release}`` does:
    the gates' devices that vouched for the release go back with the rest.
    """
    return entered is RolloutState.HALTED and failure.rollback is RollbackScope.RELEASE


# -- waves --------------------------------------------------------------------------------


@dataclass(frozen=True)
class WaveStateCount:
    """Devices of one wave in one state (a row of the store's grouped count)."""

    wave: int
    state: DeviceState
    count: int
    attempted: int  # with at least one attempt
    failed_since_resume: int  # finished after the last resume
    retrying: int  # with a retry time set


@dataclass
class WaveCounts:
    """A wave's devices by outcome (excluded, overridden and cancelled left out)."""

    total: int = 0
    succeeded: int = 0
    failed: int = 0  # counted against the failure rate (since the last resume)
    attempted: int = 0
    busy: int = 0  # offered or in progress
    waiting_retry: int = 0

    @property
    def success_rate(self) -> float:
        """Succeeded over all counted devices (1.0 for an empty wave)."""
        return 1.0 if self.total == 0 else self.succeeded / self.total

    @property
    def failure_rate(self) -> float:
        """Failed since the last resume over all counted devices (0.0 for an empty wave)."""
        return 0.0 if self.total == 0 else self.failed / self.total


def count_waves(rows: Iterable[WaveStateCount], n_waves: int) -> list[WaveCounts]:
    """Per-wave counts of a rollout from its grouped (wave, state) counts."""
    waves = [WaveCounts() for _ in range(n_waves)]
    for row in rows:
        if row.wave >= n_waves or row.state in NOT_COUNTED_STATES:
            continue
        c = waves[row.wave]
        c.total += row.count
        c.attempted += row.attempted
        if row.state is DeviceState.SUCCEEDED:
            c.succeeded += row.count
        elif row.state in FAILED_STATES:
            c.failed += row.failed_since_resume
            c.waiting_retry += row.retrying
        elif row.state in ACTIVE_DEVICE_STATES:
            c.busy += row.count
    return waves


@dataclass(frozen=True)
class Trip:
    """An open wave whose failure rate crossed ``max_failure_rate``."""

    wave: int
    reason: str


def tripped(waves: Sequence[WaveCounts], current: int, policy: RolloutPolicy) -> Trip | None:
    """The first open wave (0..``current``) failing more than ``max_failure_rate``, or None."""
    for index, c in enumerate(waves[: current + 1]):
        if c.failed and c.failure_rate > policy.max_failure_rate:
            reason = (
                f"wave {index}: {c.failed} of {c.total} devices failed "
                f"({c.failure_rate:.0%}), above max_failure_rate {policy.max_failure_rate:.0%}"
            )
            return Trip(index, reason)
    return None


class WaveStep(StrEnum):
    """What the current wave's counts mean for the rollout."""

    BELOW_GOAL = "below_goal"  # under min_success_rate: (re)start the soak when it gets there
    SOAKING = "soaking"  # at its goal, not yet for soak (or the last wave, devices busy)
    OPEN_NEXT = "open_next"  # held its goal for soak: the next wave opens
    COMPLETE = "complete"  # the last wave at its goal, nothing busy or waiting for a retry


@dataclass(frozen=True)
class WaveDecision:
    """The step, and since when the current wave holds its goal (None: it does not)."""

    step: WaveStep
    met_at: datetime | None


def wave_step(
    waves: Sequence[WaveCounts],
    current: int,
    met_at: datetime | None,
    policy: RolloutPolicy,
    now: datetime,
) -> WaveDecision:
    """Whether the current wave reached ``min_success_rate``, soaked, and what follows.

    A wave whose devices needed no change has no soak; the last wave completes
    the rollout once no device is busy or waiting for a retry.
    """
    counts = waves[current]
    if counts.success_rate < policy.min_success_rate:
        return WaveDecision(WaveStep.BELOW_GOAL, None)
    met = met_at or now
    if current == len(policy.waves) - 1:
        busy = sum(w.busy + w.waiting_retry for w in waves)
        return WaveDecision(WaveStep.COMPLETE if busy == 0 else WaveStep.SOAKING, met)
    soak = policy.soak if counts.attempted else timedelta(0)
    if now < met + soak:
        return WaveDecision(WaveStep.SOAKING, met)
    return WaveDecision(WaveStep.OPEN_NEXT, met)


# -- gates (rollout.after) ----------------------------------------------------------------


@dataclass(frozen=True)
class GateView:
    """A gate rollout as a waiting rollout sees it."""

    name: str
    state: RolloutState
    reason: str | None
    soaked_at: datetime | None  # completed: when its soak ends (None: nothing to soak)


class GateOutcome(StrEnum):
    """What a waiting rollout does about its gates."""

    HALT = "halt"  # a gate halted, was aborted or superseded: it will never start
    WAIT = "wait"  # a gate runs, is paused, or soaks
    OPEN = "open"  # every gate completed and soaked: wave 0 opens


@dataclass(frozen=True)
class GateDecision:
    """What a waiting rollout does about its gates, and the reason to record."""

    outcome: GateOutcome
    reason: str


def gate_soaked_at(
    finished_at: datetime | None, soak: timedelta, attempted: bool, now: datetime
) -> datetime | None:
    """When a completed gate has soaked: its own ``soak`` after it completed.

    None when none of its devices needed a change (nothing to soak), like a wave.
    """
    if not attempted:
        return None
    return (finished_at or now) + soak


def judge_gates(gates: Sequence[GateView], now: datetime) -> GateDecision:
    """Whether a waiting rollout opens wave 0, keeps waiting, or halts.

    Any gate halted, aborted or superseded halts it; a paused or running gate,
    or a completed one still soaking, keeps it waiting; else it opens.
    """
    for g in gates:
        if g.state in _GATE_FAILED:
            return GateDecision(GateOutcome.HALT, f"{g.name} {g.state.value}: {_why(g)}")
    waiting: list[str] = []
    for g in gates:
        if g.state is RolloutState.PAUSED:
            waiting.append(f"{g.name} (paused: {_why(g)})")
        elif g.state is not RolloutState.COMPLETED:
            waiting.append(g.name)
        elif g.soaked_at is not None and now < g.soaked_at:
            waiting.append(f"{g.name} to soak until {_stamp(g.soaked_at)}")
    if waiting:
        return GateDecision(GateOutcome.WAIT, "waiting for " + ", ".join(waiting))
    names = ", ".join(g.name for g in gates) or "the gate rollouts"
    return GateDecision(GateOutcome.OPEN, f"{names} completed; wave 0 opened")


def _why(gate: GateView) -> str:
    return gate.reason or "no reason recorded"


# -- slots --------------------------------------------------------------------------------


def choose_offers(
    candidates: Iterable[tuple[str, str | None]], target: Version, slots: int
) -> list[tuple[str, DeviceEvent]]:
    """Which pending online devices (in wave order, with their reported version) get a slot.

    A device already reporting the target is marked succeeded (``on_release``)
    instead; at most ``slots`` devices are offered.
    """
    chosen: list[tuple[str, DeviceEvent]] = []
    for device, agent_version in candidates:
        running = parse_version(agent_version)
        if running is not None and running == target:
            chosen.append((device, DeviceEvent.ON_RELEASE))
            continue
        if slots <= 0:
            break
        chosen.append((device, DeviceEvent.OFFER))
        slots -= 1
    return chosen


# -- what a device's reason says now -----------------------------------------------------------

_RETRY_SUFFIX = "; retry at "


def shown_reason(
    reason: str | None,
    *,
    retry_at: datetime | None,
    rollout: RolloutState,
    now: datetime,
) -> str | None:
    """A device's stored reason as true now: a promised retry the rollout will not make is said so.

    The reason is written when the attempt fails ("…; retry at 05:27"); the
    rollout may halt, pause or end afterwards, and the retry time may pass.
    """
    if reason is None or _RETRY_SUFFIX not in reason:
        return reason
    head = reason[: reason.rindex(_RETRY_SUFFIX)]
    if rollout is RolloutState.ACTIVE:
        if retry_at is not None and retry_at <= now:
            return f"{head}; retry due (offered when the device is seen and a slot is free)"
        return reason
    if rollout is RolloutState.PAUSED:
        return f"{head}; retry held: the rollout is paused"
    return f"{head}; not retried: the rollout is {rollout.value}"


# -- performance impact (max_cpu_increase, max_rss_increase) ------------------------------

#: Samples of the new release needed before it is judged (the first ones show a fresh start).
MIN_PERFORMANCE_SAMPLES = 3
#: CPU changes smaller than this many percentage points are noise, whatever the ratio.
MIN_CPU_POINTS = 2.0
#: Memory growth smaller than this is noise, whatever the ratio (4 MiB).
MIN_RSS_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Usage:
    """The agent's cost on one device under one release, from the runtime's samples."""

    version: str
    samples: int
    cpu_percent: float | None  # mean over the samples with a CPU figure
    rss_bytes: float  # mean (the release before) or latest (the release judged)


@dataclass(frozen=True)
class Regression:
    """A device failed by the performance policy: which resource, and why in numbers."""

    resource: str  # cpu | rss
    reason: str


def _mb(value: float) -> str:
    return f"{value / 1e6:.1f} MB"


def judge_performance(
    before: Usage | None, after: Usage | None, policy: RolloutPolicy
) -> Regression | None:
    """Whether the agent's cost on the new release (``after``) exceeds the policy's limits
    over the release the device came from (``before``); None while it does not, or
    cannot be told yet.

    Memory compares the latest RSS with the previous release's mean (a leak
    shows in the latest figure); CPU compares means. The new release needs
    ``MIN_PERFORMANCE_SAMPLES`` samples, and changes below ``MIN_CPU_POINTS``
    percentage points or ``MIN_RSS_BYTES`` never fail a device.
    """
    if before is None or after is None or before.samples == 0:
        return None
    if after.samples < MIN_PERFORMANCE_SAMPLES:
        return None
    limit = policy.max_rss_increase
    if limit is not None and before.rss_bytes > 0:
        grew = after.rss_bytes - before.rss_bytes
        ratio = after.rss_bytes / before.rss_bytes - 1
        if grew >= MIN_RSS_BYTES and ratio > limit:
            return Regression(
                "rss",
                f"memory {_mb(after.rss_bytes)} on {after.version} vs {_mb(before.rss_bytes)} "
                f"on {before.version} (+{ratio:.0%}), above max_rss_increase {limit:.0%}",
            )
    limit = policy.max_cpu_increase
    if limit is not None and before.cpu_percent is not None and after.cpu_percent is not None:
        points = after.cpu_percent - before.cpu_percent
        base = max(before.cpu_percent, 0.01)
        ratio = after.cpu_percent / base - 1
        if points >= MIN_CPU_POINTS and ratio > limit:
            return Regression(
                "cpu",
                f"CPU {after.cpu_percent:.1f}% on {after.version} vs {before.cpu_percent:.1f}% "
                f"on {before.version} (+{ratio:.0%}), above max_cpu_increase {limit:.0%}",
            )
    return None
