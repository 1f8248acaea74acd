"""The runtime's Windows service when the runtime updates itself: the SCM runs the supervisor.

With a runtime home (``%ProgramFiles%\\AgentRuntime`` say: ``versions\\<v>\\``
venvs, ``runtime.json``), the service ``AgentRuntime`` runs the base Python's
``pythonw.exe`` (the interpreter that built the venvs, named by their
``pyvenv.cfg``) on ``HOME\\winsupervisor.py``, a copy of the stdlib-only SCM
wrapper placed beside a copy of ``supervisor.py``; the supervisor starts the
current runtime (docs/runtime.md, "Runtime self-update"). The ``sc.exe``
command lines are pure functions of their inputs (tests compare them exactly),
like the unsupervised service's in ``runtime_service``. Failure actions
restart the service 10 s after the supervisor dies or stops with an error
(``failureflag 1``); stopping the service stops the supervisor, which stops its
runtime, never the agent.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path, PureWindowsPath

from agent_runtime import supervisor, winsupervisor
from agent_runtime._fsutil import atomic_write_bytes
from agent_runtime.errors import ServiceError
from agent_runtime.services._runner import Runner, describe, run_checked, subprocess_runner
from agent_runtime.services.runtime_service import (
    WINDOWS_SERVICE,
    ServiceChange,
    windows_delete_commands,
)
from agent_runtime.services.windows import WindowsServiceManager

__all__ = [
    "SUPERVISOR_FILES",
    "WindowsSupervisedService",
    "base_pythonw",
    "service_action",
    "windows_supervised_bin_path",
    "windows_supervised_create_commands",
    "windows_supervised_update_commands",
]

#: The stdlib-only files copied into the runtime home: the supervisor and its SCM wrapper.
SUPERVISOR_FILES = {
    "supervisor.py": Path(supervisor.__file__),
    "winsupervisor.py": Path(winsupervisor.__file__),
}
_DESCRIPTION = (
    "Converges this device's agent to its planned release and updates itself "
    "(agent-runtime under its supervisor)."
)
_FAILURE_ACTIONS = "restart/10000/restart/10000/restart/60000"
_ERROR_SERVICE_DOES_NOT_EXIST = 1060
_ERROR_SERVICE_EXISTS = 1073
_ERROR_SERVICE_NOT_ACTIVE = 1062
_ERROR_SERVICE_MARKED_FOR_DELETE = 1072
#: Seconds the SCM stop may take before the supervisor's process is killed: beyond the
#: supervisor's own stop timeout for its runtime.
_STOP_TIMEOUT = supervisor.STOP_TIMEOUT + 20.0


def _quote(word: str) -> str:
    """``word`` double-quoted for a Windows command line (backslashes before the closing
    quote doubled, as CommandLineToArgvW wants; paths hold no double quotes)."""
    return '"' + re.sub(r"(\\+)$", r"\1\1", word) + '"'


def windows_supervised_bin_path(
    pythonw: PureWindowsPath | Path,
    home: PureWindowsPath | Path,
    config: PureWindowsPath | Path,
    confirm_timeout: float = 120.0,
) -> str:
    """The service's command line: the base ``pythonw.exe`` running the home's copy of the
    SCM wrapper, with the supervisor's arguments."""
    win = PureWindowsPath(str(home))  # from the text: C:/x as a PosixPath is C: + x
    return (
        f"{_quote(str(PureWindowsPath(str(pythonw))))} {_quote(str(win / 'winsupervisor.py'))} "
        f"--home {_quote(str(win))} --confirm-timeout {confirm_timeout:g} "
        f"-- converge --config {_quote(str(PureWindowsPath(str(config))))}"
    )


def _settings(verb: str, bin_path: str) -> list[list[str]]:
    """``sc.exe create|config`` with the service's settings, then its description, failure
    actions and failure flag (a stop with an error counts as a failure too)."""
    name = WINDOWS_SERVICE
    return [
        [ "sc.exe", verb, name, "binPath=", bin_path, "start=", "auto",
          "DisplayName=", "Agent Runtime"],
        ["sc.exe", "description", name, _DESCRIPTION],
        ["sc.exe", "failure", name, "reset=", "86400", "actions=", _FAILURE_ACTIONS],
        ["sc.exe", "failureflag", name, "1"],
    ]  # fmt: skip


def windows_supervised_create_commands(
    pythonw: PureWindowsPath | Path,
    home: PureWindowsPath | Path,
    config: PureWindowsPath | Path,
    confirm_timeout: float = 120.0,
) -> list[list[str]]:
    """``sc.exe`` command lines that register the supervised service (automatic start,
    restarted by the SCM when the supervisor dies) and start it."""
    bin_path = windows_supervised_bin_path(pythonw, home, config, confirm_timeout)
    return [*_settings("create", bin_path), ["sc.exe", "start", WINDOWS_SERVICE]]


def windows_supervised_update_commands(
    pythonw: PureWindowsPath | Path,
    home: PureWindowsPath | Path,
    config: PureWindowsPath | Path,
    confirm_timeout: float = 120.0,
) -> list[list[str]]:
    """``sc.exe`` command lines that turn a registered ``AgentRuntime`` (the unsupervised
    service, or the supervised one with other arguments) into the supervised service and
    restart it (stop, wait for STOPPED, start)."""
    bin_path = windows_supervised_bin_path(pythonw, home, config, confirm_timeout)
    name = WINDOWS_SERVICE
    return [*_settings("config", bin_path), ["sc.exe", "stop", name], ["sc.exe", "start", name]]


def base_pythonw(venv: Path) -> Path:
    """The ``pythonw.exe`` of the interpreter that built ``venv`` (its ``pyvenv.cfg``'s
    ``home``): the supervisor must not run from a versioned venv."""
    cfg = venv / "pyvenv.cfg"
    try:
        lines = cfg.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ServiceError(f"cannot read {cfg} ({e}): run this from the runtime's venv") from e
    for line in lines:
        key, sep, value = line.partition("=")
        if sep and key.strip().lower() == "home" and value.strip():
            return Path(value.strip()) / "pythonw.exe"
    raise ServiceError(f"{cfg} names no 'home' (the interpreter that built the venv)")


class WindowsSupervisedService:
    """Installs or removes the supervised ``AgentRuntime`` service over one runtime home."""

    def __init__(
        self,
        *,
        pythonw: Path,
        home: Path,
        config: Path,
        confirm_timeout: float = 120.0,
        runner: Runner = subprocess_runner,
        command_timeout: float = 120.0,
        manager: WindowsServiceManager | None = None,
    ) -> None:
        """``pythonw``: the base interpreter's (``base_pythonw``); ``manager`` stops and
        starts the service, waiting for its state (default: one on ``runner``)."""
        self.pythonw = pythonw
        self.home = home
        self.config = config
        self.confirm_timeout = confirm_timeout
        self.runner = runner
        self.timeout = command_timeout
        self.manager = manager or WindowsServiceManager(
            WINDOWS_SERVICE, runner=runner, stop_timeout=_STOP_TIMEOUT,
            command_timeout=command_timeout,
        )  # fmt: skip

    @property
    def bin_path(self) -> str:
        """The service's command line."""
        return windows_supervised_bin_path(
            self.pythonw, self.home, self.config, self.confirm_timeout
        )

    def commands(self) -> list[list[str]]:
        """What a first install runs (``service show``)."""
        return windows_supervised_create_commands(
            self.pythonw, self.home, self.config, self.confirm_timeout
        )

    def check(self) -> None:
        """Refuse a home without a runtime to run, or a missing interpreter."""
        if not self.pythonw.is_file():
            raise ServiceError(f"no {self.pythonw}: the base Python to run the supervisor with")
        versions = self.home / supervisor.VERSIONS
        found = versions.is_dir() and any(
            (v / "Scripts" / "agent-runtime.exe").is_file() for v in versions.iterdir()
        )
        if not found:
            raise ServiceError(
                f"{versions} holds no runtime (versions\\<version>\\Scripts\\agent-runtime.exe): "
                "install the runtime's venv there first"
            )

    def copy_files(self) -> bool:
        """Copy the supervisor and its SCM wrapper into the home; True when one changed."""
        changed = False
        for name, source in SUPERVISOR_FILES.items():
            data, dest = source.read_bytes(), self.home / name
            if not (dest.is_file() and dest.read_bytes() == data):
                atomic_write_bytes(dest, data)
                changed = True
        return changed

    def install(self) -> ServiceChange:
        """Copy the files, register (or re-register) the service and start it; no change
        when all is in place and it runs."""
        self.check()
        files_changed = self.copy_files()
        # sc.exe qc's default buffer can be too small for a long command line
        qc = ["sc.exe", "qc", WINDOWS_SERVICE, "8192"]
        query = self._run(qc, ok=(0, _ERROR_SERVICE_DOES_NOT_EXIST))
        registered = query.returncode == 0
        if registered and self.bin_path in (query.stdout or "") and not files_changed:
            started = self.manager.start()
            verb = "started" if started else "unchanged"
            return ServiceChange(
                "windows", WINDOWS_SERVICE, started, f"service {WINDOWS_SERVICE} {verb}"
            )
        if registered:
            *settings, _stop, _start = windows_supervised_update_commands(
                self.pythonw, self.home, self.config, self.confirm_timeout
            )
            for argv in settings:
                self._run(argv)
            self.manager.stop()
            self.manager.start()
            detail = (
                f"service {WINDOWS_SERVICE} now runs the supervisor over {self.home}, restarted"
            )
        else:
            *settings, _start = self.commands()
            self._run(settings[0], ok=(0, _ERROR_SERVICE_EXISTS))
            for argv in settings[1:]:
                self._run(argv)
            self.manager.start()
            detail = f"service {WINDOWS_SERVICE} created over {self.home}, started"
        return ServiceChange("windows", WINDOWS_SERVICE, True, detail)

    def uninstall(self) -> ServiceChange:
        """Stop the service (its supervisor stops its runtime) and remove it; the home and
        its files stay. No change when it is not there."""
        self.manager.stop()
        _stop, delete = windows_delete_commands()
        result = self._run(
            delete, ok=(0, _ERROR_SERVICE_DOES_NOT_EXIST, _ERROR_SERVICE_MARKED_FOR_DELETE)
        )
        changed = result.returncode == 0
        verb = "removed" if changed else "was not installed"
        return ServiceChange(
            "windows", WINDOWS_SERVICE, changed, f"windows {WINDOWS_SERVICE} {verb}"
        )

    def _run(self, argv: list[str], ok: Sequence[int] = (0,)) -> subprocess.CompletedProcess[str]:
        result = run_checked(self.runner, argv, self.timeout)
        if result.returncode not in ok:
            raise ServiceError(f"windows {WINDOWS_SERVICE}: {describe(result)}")
        return result


def service_action(
    action: str,
    *,
    home: Path,
    config: Path,
    out: Callable[[str], None],
    confirm_timeout: float = 120.0,
    pythonw: Path | None = None,
    venv: Path | None = None,
    runner: Runner = subprocess_runner,
) -> int:
    """``agent-runtime service install|uninstall|show --manager windows --home H``: the
    supervised service over ``home``, run by ``pythonw`` (default: the base Python of
    ``venv``, itself by default the venv running this); the exit code."""
    if not confirm_timeout > 0:
        raise ServiceError(f"--confirm-timeout must be positive, not {confirm_timeout:g}")
    if pythonw is None:
        pythonw = base_pythonw(Path(sys.prefix) if venv is None else venv)
    service = WindowsSupervisedService(
        pythonw=pythonw,
        home=home.absolute(),
        config=config.absolute(),
        confirm_timeout=confirm_timeout,
        runner=runner,
    )
    if action == "show":
        for argv in service.commands():
            out(subprocess.list2cmdline(argv))
        return 0
    change = service.install() if action == "install" else service.uninstall()
    out(change.detail)
    return 0
