"""What every heartbeat-based health check shares: judging one heartbeat, and polling.

A heartbeat proves the expected version alive when it names that version, was
sent after the restart, and is at most ``max_age`` old. The heartbeat file,
the server's record and the NATS bus differ only in where the heartbeat comes
from, so each names its source in the details (``Source``) and calls
``judge_heartbeat``; all of them wait with ``poll_until_healthy``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from agent_runtime.effects import Clock, HealthResult
from fleetbase.duration import format_duration
from fleetbase.version import Version, VersionError

__all__ = ["Source", "judge_heartbeat", "poll_until_healthy", "same_version"]


@dataclass(frozen=True)
class Source:
    """How the details name where a heartbeat was read.

    ``heartbeat`` names a heartbeat there ("heartbeat on fleet.hb.x"), ``last``
    the newest one ("the server's last heartbeat").
    """

    heartbeat: str
    last: str


def same_version(found: str | Version, expected: Version) -> bool:
    """True when ``found`` is ``expected``; a string that is no version never is."""
    if isinstance(found, Version):
        return found == expected
    try:
        return Version.parse(found) == expected
    except VersionError:
        return False


def judge_heartbeat(
    source: Source,
    version: str | Version,
    at: datetime,
    *,
    expected: Version,
    since: datetime,
    now: datetime,
    max_age: timedelta,
) -> str | None:
    """Why the heartbeat of ``version`` sent at ``at`` does not prove ``expected`` alive
    after ``since``; None when it does."""
    if not same_version(version, expected):
        return f"{source.heartbeat} says {version}, expected {expected}"
    if at <= since:
        return (
            f"{source.last} at {at.isoformat()} is from before the restart at {since.isoformat()}"
        )
    age = now - at
    if age > max_age:
        return (
            f"{source.last} is {age.total_seconds():.1f}s old (max_age {format_duration(max_age)})"
        )
    return None


def poll_until_healthy(
    timeout: timedelta,
    clock: Clock,
    once: Callable[[], HealthResult],
    *,
    poll_interval: float,
    exited: Callable[[], str | None] = lambda: None,
) -> HealthResult:
    """Call ``once`` every ``poll_interval`` until it is healthy, the agent has exited
    (``exited`` describes how), or ``timeout`` passes; the last detail says why not."""
    limit = timeout.total_seconds()
    start = clock.monotonic()
    while True:
        result = once()
        if result.healthy:
            return result
        elapsed = clock.monotonic() - start
        ended = exited()
        if ended is not None:
            return HealthResult(False, f"{ended} after {elapsed:.1f}s; {result.detail}")
        if elapsed >= limit:
            return HealthResult(False, f"{result.detail} after {format_duration(timeout)}")
        clock.sleep(min(poll_interval, max(limit - elapsed, 0.0)))
