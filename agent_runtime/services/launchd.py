"""The ``launchd`` service manager: the agent is a launchd job, driven with ``launchctl``.

``launchctl print <domain>/<label>`` describes a loaded job (``state = running``,
``pid = 123``, ``last exit code = 3``) and exits 113 when the job is not
loaded. ``kickstart -k`` kills and restarts a loaded job; a job that is not
loaded is loaded from its plist with ``bootstrap`` (RunAtLoad starts it);
``bootout`` unloads it, which is the only stop that KeepAlive does not undo.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from agent_runtime.effects import RunSpec
from agent_runtime.errors import ServiceError
from agent_runtime.services._runner import Runner, describe, run_checked, subprocess_runner
from agent_runtime.services.settings import DEFAULT_LAUNCHD_LABEL

__all__ = ["JobStatus", "LaunchdManager", "parse_launchctl_print"]

#: launchctl's exit code for "Could not find service in domain".
EXIT_NOT_LOADED = 113
#: bootout of a job that is not loaded: ESRCH ("No such process").
EXIT_NO_SUCH_PROCESS = 3

_STATE_RE = re.compile(r"^\s*state = (.+?)\s*$", re.MULTILINE)
_PID_RE = re.compile(r"^\s*pid = (\d+)\s*$", re.MULTILINE)
_EXIT_RE = re.compile(r"^\s*last exit code = (-?\d+)", re.MULTILINE)


@dataclass(frozen=True)
class JobStatus:
    """What ``launchctl print`` says about a loaded job."""

    state: str
    pid: int | None
    last_exit_code: int | None

    @property
    def running(self) -> bool:
        """True for ``state = running``."""
        return self.state == "running"


def parse_launchctl_print(text: str) -> JobStatus | None:
    """Parse ``launchctl print`` output for the job's first ``state``/``pid``/exit lines."""
    state = _STATE_RE.search(text)
    if state is None:
        return None
    pid = _PID_RE.search(text)
    code = _EXIT_RE.search(text)
    return JobStatus(
        state=state.group(1),
        pid=int(pid.group(1)) if pid else None,
        last_exit_code=int(code.group(1)) if code else None,
    )


class LaunchdManager:
    """Restarts, stops and queries the job ``<domain>/<label>`` with ``launchctl``."""

    name = "launchd"

    def __init__(
        self,
        label: str = DEFAULT_LAUNCHD_LABEL,
        *,
        domain: str = "system",
        plist: Path | None = None,
        runner: Runner = subprocess_runner,
        command_timeout: float = 60.0,
    ) -> None:
        self.label = label
        self.domain = domain
        self.plist = plist if plist is not None else Path(f"/Library/LaunchDaemons/{label}.plist")
        self.runner = runner
        self.command_timeout = command_timeout

    @property
    def target(self) -> str:
        """The service target, e.g. ``system/com.wegweiser.persistent-agent``."""
        return f"{self.domain}/{self.label}"

    def _launchctl(self, *args: str) -> int:
        argv = ["launchctl", *args]
        result = run_checked(self.runner, argv, self.command_timeout)
        if result.returncode not in (0, EXIT_NOT_LOADED):
            raise ServiceError(f"launchctl failed for {self.target}: {describe(result)}")
        return result.returncode

    def status(self) -> JobStatus | None:
        """The job's status; None when it is not loaded."""
        result = run_checked(self.runner, ["launchctl", "print", self.target], self.command_timeout)
        if result.returncode == EXIT_NOT_LOADED:
            return None
        status = parse_launchctl_print(result.stdout or "")
        if result.returncode != 0 or status is None:
            raise ServiceError(f"cannot read the state of {self.target}: {describe(result)}")
        return status

    def _bootstrap(self) -> None:
        if self._launchctl("bootstrap", self.domain, str(self.plist)) != 0:
            raise ServiceError(f"launchd job {self.target} cannot be loaded from {self.plist}")

    def restart(self, run: RunSpec) -> None:
        """``launchctl kickstart -k <target>``; loads the job from its plist if it is not loaded."""
        if self._launchctl("kickstart", "-k", self.target) == EXIT_NOT_LOADED:
            self._bootstrap()

    def stop(self) -> None:
        """``launchctl bootout <target>`` (SIGTERM, then SIGKILL after the job's ExitTimeOut)."""
        argv = ["launchctl", "bootout", self.target]
        result = run_checked(self.runner, argv, self.command_timeout)
        if result.returncode not in (0, EXIT_NOT_LOADED, EXIT_NO_SUCH_PROCESS):
            raise ServiceError(f"cannot stop {self.target}: {describe(result)}")

    def is_running(self) -> bool:
        """``launchctl print`` shows ``state = running``; a job not loaded is not running."""
        status = self.status()
        return status is not None and status.running

    def ensure_running(self, run: RunSpec) -> bool:
        """Load or kickstart the job unless it runs; True when it had to be started."""
        status = self.status()
        if status is not None and status.running:
            return False
        if status is None or self._launchctl("kickstart", self.target) == EXIT_NOT_LOADED:
            self._bootstrap()
        return True
