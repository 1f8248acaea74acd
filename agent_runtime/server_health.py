"""The ``server`` health check kind: health confirmed through the server's heartbeat record."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from agent_runtime.effects import Clock, HealthProbe, HealthResult, ServiceManager
from agent_runtime.errors import ServerError
from agent_runtime.health import ExitReporter
from fleetbase.duration import format_duration
from fleetbase.version import Version
from states.manifest import HealthCheck, HealthCheckKind
from states.protocol import Heartbeat

__all__ = ["ServerHealth"]


# -- the server health check kind -----------------------------------------------------------


class ServerHealth:
    """A ``HealthProbe``: the ``server`` kind asks the server for its record of the agent's
    heartbeat; every other kind goes to the local probe."""

    def __init__(
        self,
        local: HealthProbe,
        service: ServiceManager,
        record: Callable[[], Heartbeat | None],
        *,
        forward: Callable[[], object] | None = None,
        poll_interval: float = 0.5,
    ) -> None:
        self.local = local
        self.service = service
        self.record = record
        self.forward = forward
        self.poll_interval = poll_interval

    def wait_healthy(
        self, check: HealthCheck, expected: Version, since: datetime, clock: Clock
    ) -> HealthResult:
        """Poll the server's record until it shows ``expected`` beating after ``since`` and
        within ``max_age``, or ``check.timeout`` passes."""
        if check.kind is not HealthCheckKind.SERVER:
            return self.local.wait_healthy(check, expected, since, clock)
        timeout = check.timeout.total_seconds()
        start = clock.monotonic()
        while True:
            result = self._once(check, expected, since, clock)
            if result.healthy:
                return result
            elapsed = clock.monotonic() - start
            if isinstance(self.service, ExitReporter) and not self.service.is_running():
                ended = self.service.last_exit()
                if ended is not None:
                    return HealthResult(
                        False, f"process {ended.describe()} after {elapsed:.1f}s; {result.detail}"
                    )
            if elapsed >= timeout:
                return HealthResult(
                    False, f"{result.detail} after {format_duration(check.timeout)}"
                )
            clock.sleep(min(self.poll_interval, max(timeout - elapsed, 0.0)))

    def _once(
        self, check: HealthCheck, expected: Version, since: datetime, clock: Clock
    ) -> HealthResult:
        if self.forward is not None:
            self.forward()
        try:
            beat = self.record()
        except ServerError as e:
            return HealthResult(False, f"cannot read the server's heartbeat record: {e}")
        if beat is None:
            return HealthResult(False, "the server has no heartbeat of this device")
        if beat.version != expected:
            return HealthResult(False, f"the server's last heartbeat says {beat.version}")
        if beat.at <= since:
            return HealthResult(
                False, f"the server's last heartbeat ({beat.at.isoformat()}) is from before "
                f"the restart at {since.isoformat()}",
            )  # fmt: skip
        age = clock.now() - beat.at
        if age > check.max_age:
            return HealthResult(
                False, f"the server's last heartbeat is {age.total_seconds():.1f}s old "
                f"(max_age {format_duration(check.max_age)})",
            )  # fmt: skip
        return HealthResult(
            True, f"server recorded a heartbeat of {expected} at {beat.at.isoformat()}"
        )
