"""The ``server`` health check kind: health confirmed through the server's heartbeat record."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from agent_runtime.effects import Clock, HealthProbe, HealthResult, ServiceManager
from agent_runtime.errors import ServerError
from agent_runtime.health import exit_detail
from agent_runtime.heartbeat_judge import Source, judge_heartbeat, poll_until_healthy
from fleetbase.version import Version
from states.manifest import HealthCheck, HealthCheckKind
from states.protocol import Heartbeat

__all__ = ["ServerHealth"]

#: How the server's heartbeat record is named in details.
SERVER = Source(heartbeat="the server's last heartbeat", last="the server's last heartbeat")


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
        return poll_until_healthy(
            check.timeout,
            clock,
            lambda: self._once(check, expected, since, clock),
            poll_interval=self.poll_interval,
            exited=lambda: exit_detail(self.service),
        )

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
        wrong = judge_heartbeat(
            SERVER, beat.version, beat.at, expected=expected, since=since, now=clock.now(),
            max_age=check.max_age,
        )  # fmt: skip
        if wrong is not None:
            return HealthResult(False, wrong)
        return HealthResult(
            True, f"server recorded a heartbeat of {expected} at {beat.at.isoformat()}"
        )
