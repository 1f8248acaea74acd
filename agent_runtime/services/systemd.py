"""The ``systemd`` service manager: the agent is a systemd unit, driven with ``systemctl``."""

from __future__ import annotations

from agent_runtime.effects import RunSpec
from agent_runtime.errors import ServiceError
from agent_runtime.services._runner import Runner, describe, run_checked, subprocess_runner
from agent_runtime.services.settings import DEFAULT_SYSTEMD_UNIT

__all__ = ["SystemdManager"]

#: ``systemctl is-active`` prints one of these; only the first two mean "running".
_RUNNING_STATES = frozenset({"active", "reloading"})
_NOT_RUNNING_STATES = frozenset(
    {"inactive", "failed", "activating", "deactivating", "maintenance", "unknown"}
)
#: systemctl's LSB exit code for "program or unit is not installed / not loaded".
_EXIT_NOT_INSTALLED = 5


class SystemdManager:
    """Starts, stops and queries ``unit`` with ``systemctl``, which waits for each job."""

    name = "systemd"

    def __init__(
        self,
        unit: str = DEFAULT_SYSTEMD_UNIT,
        *,
        runner: Runner = subprocess_runner,
        command_timeout: float = 120.0,
    ) -> None:
        self.unit = unit
        self.runner = runner
        self.command_timeout = command_timeout

    def _systemctl(self, *args: str) -> list[str]:
        return ["systemctl", *args, self.unit]

    def _act(self, verb: str) -> None:
        result = run_checked(self.runner, self._systemctl(verb), self.command_timeout)
        if result.returncode == _EXIT_NOT_INSTALLED:
            raise ServiceError(f"systemd unit {self.unit} is not installed: {describe(result)}")
        if result.returncode != 0:
            raise ServiceError(f"cannot {verb} {self.unit}: {describe(result)}")

    def restart(self, run: RunSpec) -> None:
        """``systemctl restart <unit>``; the unit file decides what runs (``run`` is unused)."""
        self._act("restart")

    def stop(self) -> None:
        """``systemctl stop <unit>``; a unit that is not loaded counts as stopped."""
        result = run_checked(self.runner, self._systemctl("stop"), self.command_timeout)
        if result.returncode not in (0, _EXIT_NOT_INSTALLED):
            raise ServiceError(f"cannot stop {self.unit}: {describe(result)}")

    def is_running(self) -> bool:
        """``systemctl is-active <unit>`` says ``active`` (or ``reloading``)."""
        result = run_checked(self.runner, self._systemctl("is-active"), self.command_timeout)
        lines = (result.stdout or "").split()
        state = lines[0] if lines else ""
        if state in _RUNNING_STATES:
            return True
        if state in _NOT_RUNNING_STATES:
            return False
        raise ServiceError(f"cannot tell whether {self.unit} runs: {describe(result)}")

    def ensure_running(self, run: RunSpec) -> bool:
        """``systemctl start <unit>`` unless it is active; True when it had to be started."""
        if self.is_running():
            return False
        self._act("start")
        return True
