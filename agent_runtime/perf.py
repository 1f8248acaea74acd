"""The agent's CPU and memory, sampled at each check-in (performance-impact tracking).

The process is the one named by the agent's newest heartbeat (its ``pid``),
whatever service manager runs it, so the figures belong to the release that
heartbeat names. CPU is measured between two samples of the same process, so
the first sample of a process carries memory only. Sampling never fails a
check-in: a process that is gone or not readable gives no sample.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil

from agent_runtime._pull_senders import read_agent_heartbeat
from states.protocol import Heartbeat, PerformanceSample

__all__ = ["AgentSampler"]

#: A heartbeat older than this names a process that may be gone (its pid reused).
MAX_HEARTBEAT_AGE = timedelta(minutes=5)


class AgentSampler:
    """Samples the agent process found through its heartbeat files."""

    def __init__(
        self,
        heartbeat_paths: Callable[[], list[Path]],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        """Look for the agent in the heartbeat files ``heartbeat_paths()`` lists."""
        self._paths = heartbeat_paths
        self._clock = clock
        self._process: psutil.Process | None = None

    def sample(self) -> PerformanceSample | None:
        """The agent's CPU % since the last sample and its RSS now; None when not found."""
        beat = self._newest_heartbeat()
        if beat is None or beat.pid is None:
            return None
        now = self._clock()
        try:
            process, first = self._process_of(beat.pid)
            with process.oneshot():
                cpu = process.cpu_percent(None)
                rss = process.memory_info().rss
        except psutil.Error:
            self._process = None
            return None
        return PerformanceSample(
            version=beat.version,
            pid=beat.pid,
            cpu_percent=None if first else round(cpu, 2),
            rss_bytes=rss,
            at=now,
        )

    def _process_of(self, pid: int) -> tuple[psutil.Process, bool]:
        """The process ``pid`` (the one sampled before, when it is still the same)."""
        kept = self._process
        if kept is not None and kept.pid == pid and kept.is_running():
            return kept, False
        self._process = psutil.Process(pid)
        return self._process, True

    def _newest_heartbeat(self) -> Heartbeat | None:
        beats = [b for b in map(read_agent_heartbeat, self._paths()) if b is not None]
        if not beats:
            return None
        newest = max(beats, key=lambda b: b.at)
        at = newest.at if newest.at.tzinfo is not None else newest.at.replace(tzinfo=UTC)
        return newest if self._clock() - at <= MAX_HEARTBEAT_AGE else None
