"""The ``windows`` service manager: the agent is a Windows service, driven with ``sc.exe``.

``sc.exe stop`` and ``sc.exe start`` only *ask* the Service Control Manager and
return at once, so every change is followed by polling ``sc.exe queryex`` until
the service reaches STOPPED or RUNNING. States are read by their numeric code
(``STATE : 4  RUNNING``) and failures by sc.exe's exit code (the Win32 error),
because the words are translated on localized Windows.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent_runtime.effects import RunSpec
from agent_runtime.errors import ServiceError
from agent_runtime.services._runner import Runner, describe, run_checked, subprocess_runner
from agent_runtime.services.settings import DEFAULT_WINDOWS_SERVICE

__all__ = ["ServiceStatus", "WindowsServiceManager", "parse_sc_query"]

STOPPED, START_PENDING, STOP_PENDING, RUNNING = 1, 2, 3, 4
_STATE_NAMES = {
    1: "STOPPED",
    2: "START_PENDING",
    3: "STOP_PENDING",
    4: "RUNNING",
    5: "CONTINUE_PENDING",
    6: "PAUSE_PENDING",
    7: "PAUSED",
}
# Win32 error codes sc.exe exits with.
ERROR_SERVICE_ALREADY_RUNNING = 1056
ERROR_SERVICE_DOES_NOT_EXIST = 1060
ERROR_SERVICE_NOT_ACTIVE = 1062

_STATE_RE = re.compile(r"^\s*STATE\s*:\s*(\d+)", re.MULTILINE)
_PID_RE = re.compile(r"^\s*PID\s*:\s*(\d+)", re.MULTILINE)
_EXIT_RE = re.compile(r"^\s*WIN32_EXIT_CODE\s*:\s*(\d+)", re.MULTILINE)
_POLL_INTERVAL = 0.5


@dataclass(frozen=True)
class ServiceStatus:
    """What ``sc.exe queryex`` says about a service."""

    state: int
    pid: int | None
    win32_exit_code: int | None

    @property
    def state_name(self) -> str:
        """STOPPED, RUNNING, ... as sc.exe prints them."""
        return _STATE_NAMES.get(self.state, f"state {self.state}")


def parse_sc_query(text: str) -> ServiceStatus | None:
    """Parse the output of ``sc.exe query``/``queryex``; None when there is no STATE line."""
    state = _STATE_RE.search(text)
    if state is None:
        return None
    pid = _PID_RE.search(text)
    code = _EXIT_RE.search(text)
    return ServiceStatus(
        state=int(state.group(1)),
        pid=int(pid.group(1)) if pid else None,
        win32_exit_code=int(code.group(1)) if code else None,
    )


class WindowsServiceManager:
    """Stops, starts and queries the service ``service_name`` through the SCM with ``sc.exe``."""

    name = "windows"

    def __init__(
        self,
        service_name: str = DEFAULT_WINDOWS_SERVICE,
        *,
        runner: Runner = subprocess_runner,
        stop_timeout: float = 10.0,
        start_timeout: float = 30.0,
        command_timeout: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.service_name = service_name
        self.runner = runner
        self.stop_timeout = stop_timeout
        self.start_timeout = start_timeout
        self.command_timeout = command_timeout
        self._sleep = sleep
        self._monotonic = monotonic

    def _sc(self, verb: str) -> list[str]:
        return ["sc.exe", verb, self.service_name]

    def query(self) -> ServiceStatus | None:
        """The service's status; None when it is not installed."""
        result = run_checked(self.runner, self._sc("queryex"), self.command_timeout)
        if result.returncode == ERROR_SERVICE_DOES_NOT_EXIST:
            return None
        status = parse_sc_query(result.stdout or "")
        if result.returncode != 0 or status is None:
            raise ServiceError(f"cannot query service {self.service_name}: {describe(result)}")
        return status

    def _require(self) -> ServiceStatus:
        status = self.query()
        if status is None:
            raise ServiceError(
                f"Windows service {self.service_name} is not installed "
                f"(sc.exe error {ERROR_SERVICE_DOES_NOT_EXIST})"
            )
        return status

    def _wait_for(self, wanted: int, timeout: float) -> ServiceStatus:
        """Poll until the service reaches ``wanted`` or a final other state, or time runs out."""
        deadline = self._monotonic() + timeout
        status = self._require()
        while status.state != wanted:
            if wanted == RUNNING and status.state == STOPPED:
                return status  # the start failed: waiting longer will not help
            if self._monotonic() >= deadline:
                return status
            self._sleep(_POLL_INTERVAL)
            status = self._require()
        return status

    def restart(self, run: RunSpec) -> None:
        """Stop the service (killing its process after ``stop_timeout``) and start it."""
        self.stop()
        self._start()

    def stop(self) -> None:
        """``sc.exe stop``, wait for STOPPED; ``taskkill /F`` the service process if it hangs."""
        status = self.query()
        if status is None or status.state == STOPPED:
            return
        result = run_checked(self.runner, self._sc("stop"), self.command_timeout)
        if result.returncode not in (0, ERROR_SERVICE_NOT_ACTIVE):
            raise ServiceError(f"cannot stop service {self.service_name}: {describe(result)}")
        status = self._wait_for(STOPPED, self.stop_timeout)
        if status.state == STOPPED:
            return
        if status.pid:
            kill = ["taskkill.exe", "/F", "/PID", str(status.pid)]
            run_checked(self.runner, kill, self.command_timeout)
            status = self._wait_for(STOPPED, self.stop_timeout)
        if status.state != STOPPED:
            raise ServiceError(
                f"service {self.service_name} is still {status.state_name} "
                f"{self.stop_timeout:g}s after sc.exe stop"
            )

    def is_running(self) -> bool:
        """``sc.exe queryex`` reports STATE 4 RUNNING; a missing service is not running."""
        status = self.query()
        return status is not None and status.state == RUNNING

    def ensure_running(self, run: RunSpec) -> bool:
        """Start the service unless it is RUNNING; True when it had to be started."""
        return self.start()

    def start(self) -> bool:
        """Start the service unless it is RUNNING, waiting for RUNNING; True when it had to
        be started."""
        if self.is_running():
            return False
        self._start()
        return True

    def _start(self) -> None:
        self._require()
        result = run_checked(self.runner, self._sc("start"), self.command_timeout)
        if result.returncode not in (0, ERROR_SERVICE_ALREADY_RUNNING):
            raise ServiceError(f"cannot start service {self.service_name}: {describe(result)}")
        status = self._wait_for(RUNNING, self.start_timeout)
        if status.state != RUNNING:
            code = f" (WIN32_EXIT_CODE {status.win32_exit_code})" if status.win32_exit_code else ""
            raise ServiceError(
                f"service {self.service_name} is {status.state_name}{code} "
                f"after sc.exe start, not RUNNING"
            )
