"""agent-runtime itself as an OS service: a systemd unit, a launchd daemon, a Windows service.

The service runs ``agent-runtime converge --config <file>`` (periodic pull
mode) as root / LocalSystem, restarted by the OS when it dies. Generating the
unit file, plist and ``sc.exe`` command lines is pure (tests compare them
exactly); installing writes the file and runs the service tool through the
same ``Runner`` the agent's managers use. Both install and uninstall are
idempotent: nothing is rewritten or restarted when already in place.

Windows: a service binary must answer the Service Control Manager, which a
plain console program does not. ``binPath`` therefore runs the venv's
``pythonw.exe -m agent_runtime.winservice``, a small ctypes wrapper
that registers with the SCM and runs the converge loop until asked to stop.
"""

from __future__ import annotations

import plistlib
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from agent_runtime._fsutil import atomic_write_bytes
from agent_runtime.errors import ServiceError
from agent_runtime.services._runner import Runner, describe, run_checked, subprocess_runner

__all__ = [
    "LAUNCHD_LABEL",
    "SYSTEMD_UNIT",
    "WINDOWS_SERVICE",
    "RuntimeService",
    "ServiceChange",
    "launchd_plist",
    "systemd_quote",
    "systemd_unit",
    "windows_create_commands",
    "windows_delete_commands",
]

SYSTEMD_UNIT = "agent-runtime.service"
LAUNCHD_LABEL = "org.fleet-rollout.agent-runtime"
WINDOWS_SERVICE = "AgentRuntime"
SYSTEMD_DIR = Path("/etc/systemd/system")
LAUNCHD_DIR = Path("/Library/LaunchDaemons")

ServiceKind = Literal["systemd", "launchd", "windows"]
#: sc.exe's exit codes (Win32 errors) that mean "already there" / "not there".
_ERROR_SERVICE_EXISTS = 1073
_ERROR_SERVICE_DOES_NOT_EXIST = 1060
_ERROR_SERVICE_NOT_ACTIVE = 1062
_ERROR_SERVICE_ALREADY_RUNNING = 1056
_ERROR_SERVICE_MARKED_FOR_DELETE = 1072
_LAUNCHD_NOT_LOADED = (3, 113)  # ESRCH / "Could not find service"
_SYSTEMD_NOT_LOADED = 5


@dataclass(frozen=True)
class ServiceChange:
    """What an install or uninstall did (nothing when ``changed`` is False)."""

    kind: str
    name: str
    changed: bool
    detail: str


def systemd_unit(executable: Path, config: Path) -> str:
    """The unit file running ``executable converge --config config`` as root."""
    return (
        "[Unit]\n"
        "Description=agent-runtime: converges this device's agent to its planned release\n"
        "Documentation=https://github.com/fleet-rollout/fleet-rollout/blob/main/docs/install.md\n"
        "Wants=network-online.target\n"
        "After=network-online.target\n"
        "\n"
        "[Service]\n"
        "Type=simple\n"
        f"ExecStart={systemd_quote(str(executable))} converge --config "
        f"{systemd_quote(str(config))}\n"
        "Restart=always\n"
        "RestartSec=10\n"
        # The agent's own unit is separate: stopping the runtime must never stop the agent.
        "KillMode=process\n"
        "TimeoutStopSec=60\n"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


def systemd_quote(word: str) -> str:
    """``word`` as one word of a unit's ExecStart (quoted when it needs to be)."""
    if word and all(c.isalnum() or c in "/._-+:@" for c in word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def launchd_plist(executable: Path, config: Path, log: Path) -> bytes:
    """The launchd daemon plist running ``executable converge --config config`` as root."""
    job = {
        "Label": LAUNCHD_LABEL,
        "ProgramArguments": [str(executable), "converge", "--config", str(config)],
        "RunAtLoad": True,
        "KeepAlive": True,
        "ThrottleInterval": 10,
        "ExitTimeOut": 60,
        "StandardOutPath": str(log),
        "StandardErrorPath": str(log),
    }
    return plistlib.dumps(job, fmt=plistlib.FMT_XML, sort_keys=True)


def windows_bin_path(pythonw: Path, config: Path) -> str:
    """The service's command line: the venv's pythonw running the SCM wrapper."""
    return f'"{pythonw}" -m agent_runtime.winservice --config "{config}"'


def windows_create_commands(pythonw: Path, config: Path) -> list[list[str]]:
    """``sc.exe`` command lines that register the runtime's service (start: automatic,
    restarted by the SCM after a crash) and start it."""
    name = WINDOWS_SERVICE
    return [
        ["sc.exe", "create", name, "binPath=", windows_bin_path(pythonw, config),
         "start=", "auto", "DisplayName=", "Agent Runtime"],
        ["sc.exe", "description", name,
         "Converges this device's agent to its planned release (agent-runtime)."],
        ["sc.exe", "failure", name, "reset=", "86400",
         "actions=", "restart/10000/restart/10000/restart/60000"],
        ["sc.exe", "start", name],
    ]  # fmt: skip


def windows_delete_commands() -> list[list[str]]:
    """``sc.exe`` command lines that stop and remove the runtime's service."""
    return [["sc.exe", "stop", WINDOWS_SERVICE], ["sc.exe", "delete", WINDOWS_SERVICE]]


class RuntimeService:
    """Installs or removes the runtime's own service of one kind."""

    def __init__(
        self,
        kind: ServiceKind,
        *,
        executable: Path,
        config: Path,
        log: Path,
        directory: Path | None = None,
        runner: Runner = subprocess_runner,
        command_timeout: float = 120.0,
    ) -> None:
        """``executable`` is the venv's ``agent-runtime`` (Windows: its ``pythonw.exe``);
        ``directory`` where the unit / plist goes (default the system's)."""
        self.kind = kind
        self.executable = executable
        self.config = config
        self.log = log
        self.runner = runner
        self.timeout = command_timeout
        default = {"systemd": SYSTEMD_DIR, "launchd": LAUNCHD_DIR, "windows": None}[kind]
        self.directory = directory if directory is not None else default

    @property
    def name(self) -> str:
        """The unit, label or service name."""
        return {"systemd": SYSTEMD_UNIT, "launchd": LAUNCHD_LABEL, "windows": WINDOWS_SERVICE}[
            self.kind
        ]

    @property
    def file(self) -> Path | None:
        """The unit file or plist (None on Windows: the SCM keeps the registration)."""
        if self.directory is None:
            return None
        suffix = ".plist" if self.kind == "launchd" else ""
        return self.directory / f"{self.name}{suffix}"

    def content(self) -> bytes | None:
        """The unit file's or plist's bytes."""
        if self.kind == "systemd":
            return systemd_unit(self.executable, self.config).encode()
        if self.kind == "launchd":
            return launchd_plist(self.executable, self.config, self.log)
        return None

    # -- install ----------------------------------------------------------------------

    def install(self) -> ServiceChange:
        """Register and start the service; no change when it is registered as wanted."""
        if self.kind == "windows":
            return self._install_windows()
        file, content = self.file, self.content()
        assert file is not None and content is not None
        same = file.is_file() and file.read_bytes() == content
        if self.kind == "systemd":
            same = self._install_systemd(file, content, same)
        else:
            # Stopped before the file changes, so that a run interrupted anywhere is finished
            # by the next one: the job is never left running an older plist.
            target = f"system/{self.name}"
            loaded = self._run(["launchctl", "print", target], ok=(0, 113)).returncode == 0
            if loaded and not same:
                self._run(["launchctl", "bootout", target], ok=(0, *_LAUNCHD_NOT_LOADED))
            if not same:
                atomic_write_bytes(file, content)
                file.chmod(0o644)
            if not loaded or not same:
                self._run(["launchctl", "bootstrap", "system", str(file)])
            same = same and loaded
        verb = "unchanged" if same else "installed and started"
        return ServiceChange(self.kind, self.name, not same, f"{self.kind} {self.name} {verb}")

    def _install_systemd(self, file: Path, content: bytes, same: bool) -> bool:
        """Write, reload and (re)start the unit; True when nothing had to change.

        A changed unit replaces the running one (stop, write, reload, start): ``enable
        --now`` alone would leave a running service on its old command line. A unit
        already written whose reload or start an earlier run did not reach
        (``NeedDaemonReload``) is reloaded and restarted."""
        if not same:
            self._run(["systemctl", "stop", self.name], ok=(0, _SYSTEMD_NOT_LOADED))
            atomic_write_bytes(file, content)
            file.chmod(0o644)
            self._run(["systemctl", "daemon-reload"])
        else:
            show = ["systemctl", "show", "--property=NeedDaemonReload", "--value", self.name]
            if (self._run(show).stdout or "").strip() == "yes":
                self._run(["systemctl", "daemon-reload"])
                self._run(["systemctl", "restart", self.name])
                same = False
        self._run(["systemctl", "enable", "--now", self.name])
        return same

    def _install_windows(self) -> ServiceChange:
        commands = windows_create_commands(self.executable, self.config)
        query = self._run(["sc.exe", "qc", self.name], ok=(0, _ERROR_SERVICE_DOES_NOT_EXIST))
        wanted = windows_bin_path(self.executable, self.config)
        if query.returncode == 0 and wanted in (query.stdout or ""):
            self._run(commands[-1], ok=(0, _ERROR_SERVICE_ALREADY_RUNNING))
            return ServiceChange("windows", self.name, False, f"service {self.name} unchanged")
        if query.returncode == 0:  # registered with another command line: replace it
            self._delete_windows()
        self._run(commands[0], ok=(0, _ERROR_SERVICE_EXISTS))
        for argv in commands[1:-1]:
            self._run(argv)
        self._run(commands[-1], ok=(0, _ERROR_SERVICE_ALREADY_RUNNING))
        return ServiceChange("windows", self.name, True, f"service {self.name} created, started")

    # -- uninstall --------------------------------------------------------------------

    def uninstall(self) -> ServiceChange:
        """Stop and remove the service; no change when it is not there."""
        if self.kind == "windows":
            changed = self._delete_windows()
        elif self.kind == "systemd":
            file = self.file
            assert file is not None
            changed = file.exists()
            self._run(["systemctl", "disable", "--now", self.name], ok=(0, 1, _SYSTEMD_NOT_LOADED))
            if changed:
                file.unlink()
                self._run(["systemctl", "daemon-reload"])
        else:
            file = self.file
            assert file is not None
            result = self._run(
                ["launchctl", "bootout", f"system/{self.name}"], ok=(0, *_LAUNCHD_NOT_LOADED)
            )
            changed = file.exists() or result.returncode == 0
            file.unlink(missing_ok=True)
        verb = "removed" if changed else "was not installed"
        return ServiceChange(self.kind, self.name, changed, f"{self.kind} {self.name} {verb}")

    def _delete_windows(self) -> bool:
        stop, delete = windows_delete_commands()
        self._run(stop, ok=(0, _ERROR_SERVICE_NOT_ACTIVE, _ERROR_SERVICE_DOES_NOT_EXIST))
        result = self._run(
            delete, ok=(0, _ERROR_SERVICE_DOES_NOT_EXIST, _ERROR_SERVICE_MARKED_FOR_DELETE)
        )
        return result.returncode == 0

    def _run(self, argv: list[str], ok: Sequence[int] = (0,)) -> subprocess.CompletedProcess[str]:
        result = run_checked(self.runner, argv, self.timeout)
        if result.returncode not in ok:
            raise ServiceError(f"{self.kind} {self.name}: {describe(result)}")
        return result
