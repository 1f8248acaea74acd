"""The runtime's OS service when the runtime updates itself: the service runs the supervisor.

With a runtime home (``/opt/agent-runtime`` say: ``versions/<v>/`` venvs,
``runtime.json``, a copy of ``supervisor.py``), the service manager starts the
supervisor with the system's Python, and the supervisor starts the current
runtime (docs/runtime.md, "Runtime self-update"). The unit and plist are pure
functions of their inputs (tests compare them exactly), like the runtime's own
unit in ``runtime_service``; stopping the service stops the supervisor, which
stops its runtime, never the agent (``KillMode=process``).
"""

from __future__ import annotations

import plistlib
from pathlib import Path

from agent_runtime.errors import ServiceError
from agent_runtime.services._runner import Runner, subprocess_runner
from agent_runtime.services.runtime_service import (
    LAUNCHD_LABEL,
    RuntimeService,
    ServiceChange,
    ServiceKind,
    systemd_quote,
)

__all__ = [
    "SUPERVISOR_FILE",
    "SupervisedService",
    "supervised_argv",
    "supervised_launchd_plist",
    "supervised_systemd_unit",
]

#: The supervisor's copy in the runtime home.
SUPERVISOR_FILE = "supervisor.py"


def supervised_argv(python: Path, home: Path, config: Path, confirm_timeout: float) -> list[str]:
    """The supervisor's command line: ``python home/supervisor.py --home home ... -- converge
    --config config``."""
    return [str(python), str(home / SUPERVISOR_FILE), "--home", str(home),
            "--confirm-timeout", f"{confirm_timeout:g}", "--",
            "converge", "--config", str(config)]  # fmt: skip


def supervised_systemd_unit(
    python: Path, home: Path, config: Path, confirm_timeout: float = 120.0
) -> str:
    """The unit file running the supervisor over ``home`` as root."""
    argv = " ".join(systemd_quote(w) for w in supervised_argv(python, home, config,
                                                                 confirm_timeout))  # fmt: skip
    return (
        "[Unit]\n"
        "Description=agent-runtime (supervised): converges this device's agent; "
        "updates itself\n"
        "Wants=network-online.target\n"
        "After=network-online.target\n"
        "\n"
        "[Service]\n"
        "Type=simple\n"
        f"ExecStart={argv}\n"
        "Restart=always\n"
        "RestartSec=10\n"
        # The supervisor stops its runtime on SIGTERM; the agent's own unit is separate.
        "KillMode=process\n"
        "TimeoutStopSec=60\n"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


def supervised_launchd_plist(
    python: Path, home: Path, config: Path, log: Path, confirm_timeout: float = 120.0
) -> bytes:
    """The launchd daemon plist running the supervisor over ``home`` as root."""
    job = {
        "Label": LAUNCHD_LABEL,
        "ProgramArguments": supervised_argv(python, home, config, confirm_timeout),
        "RunAtLoad": True,
        "KeepAlive": True,
        "ThrottleInterval": 10,
        "ExitTimeOut": 60,
        "AbandonProcessGroup": True,  # the agent outlives a stopped supervisor
        "StandardOutPath": str(log),
        "StandardErrorPath": str(log),
    }
    return plistlib.dumps(job, fmt=plistlib.FMT_XML, sort_keys=True)


class SupervisedService(RuntimeService):
    """Installs or removes the runtime's service that runs the supervisor over a runtime home
    (same name, file and commands as the plain service in ``runtime_service``: installing
    one replaces the other)."""

    def __init__(
        self,
        kind: ServiceKind,
        *,
        python: Path,
        home: Path,
        config: Path,
        log: Path,
        confirm_timeout: float = 120.0,
        directory: Path | None = None,
        runner: Runner = subprocess_runner,
    ) -> None:
        """``python`` is the system's Python that runs ``home``'s supervisor.py."""
        if kind == "windows":  # the SCM keeps no unit file: windows_supervised does it
            raise ServiceError("SupervisedService is systemd's and launchd's; on Windows use "
                               "agent_runtime.services.windows_supervised")  # fmt: skip
        if not confirm_timeout > 0:
            raise ServiceError(f"--confirm-timeout must be positive, not {confirm_timeout:g}")
        super().__init__(kind, executable=python, config=config, log=log, directory=directory,
                         runner=runner)  # fmt: skip
        self.home = home
        self.confirm_timeout = confirm_timeout

    def content(self) -> bytes:
        """The supervised unit file's or plist's bytes."""
        if self.kind == "systemd":
            unit = supervised_systemd_unit(self.executable, self.home, self.config,
                                           self.confirm_timeout)  # fmt: skip
            return unit.encode()
        return supervised_launchd_plist(
            self.executable, self.home, self.config, self.log, self.confirm_timeout
        )

    def install(self) -> ServiceChange:
        """Register and start the service; ServiceError when ``home`` is no runtime home."""
        if not (self.home / SUPERVISOR_FILE).is_file():
            raise ServiceError(
                f"{self.home} is not a runtime home: it has no {SUPERVISOR_FILE} (the "
                "installer lays it out; see docs/install.md)"
            )
        return super().install()
