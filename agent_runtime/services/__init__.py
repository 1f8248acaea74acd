"""Service managers: how the runtime stops, starts and watches the agent on each platform."""

from __future__ import annotations

from pathlib import Path

from agent_runtime.effects import ServiceManager
from agent_runtime.errors import ServiceError
from agent_runtime.services._runner import Runner, subprocess_runner
from agent_runtime.services.launchd import LaunchdManager
from agent_runtime.services.process import ProcessExit, ProcessManager
from agent_runtime.services.settings import (
    DEFAULT_LAUNCHD_LABEL,
    DEFAULT_SYSTEMD_UNIT,
    DEFAULT_WINDOWS_SERVICE,
    ServiceSettings,
)
from agent_runtime.services.systemd import SystemdManager
from agent_runtime.services.windows import WindowsServiceManager

__all__ = [
    "DEFAULT_LAUNCHD_LABEL",
    "DEFAULT_SYSTEMD_UNIT",
    "DEFAULT_WINDOWS_SERVICE",
    "LaunchdManager",
    "ProcessExit",
    "ProcessManager",
    "Runner",
    "ServiceSettings",
    "SystemdManager",
    "WindowsServiceManager",
    "make_service_manager",
]


def make_service_manager(
    settings: ServiceSettings,
    *,
    default_state_dir: Path | None = None,
    runner: Runner = subprocess_runner,
) -> ServiceManager:
    """Build the service manager the device config names.

    ``default_state_dir`` is where the ``process`` manager keeps its pid file and
    the agent's log when the settings name no ``state_dir``. Raises ServiceError
    when the ``process`` manager has no state directory at all.
    """
    stop_timeout = settings.stop_timeout.total_seconds()
    command_timeout = settings.command_timeout.total_seconds()
    if settings.manager == "systemd":
        return SystemdManager(settings.unit, runner=runner, command_timeout=command_timeout)
    if settings.manager == "windows":
        return WindowsServiceManager(
            settings.service_name,
            runner=runner,
            stop_timeout=stop_timeout,
            start_timeout=settings.start_timeout.total_seconds(),
            command_timeout=command_timeout,
        )
    if settings.manager == "launchd":
        return LaunchdManager(
            settings.label,
            domain=settings.launchd_domain,
            plist=settings.plist,
            runner=runner,
            command_timeout=command_timeout,
        )
    state_dir = settings.state_dir or default_state_dir
    if state_dir is None:
        raise ServiceError(
            "service.manager 'process' needs service.state_dir (or a runtime state directory) "
            "for its pid file and the agent's log"
        )
    return ProcessManager(
        state_dir,
        stop_timeout=stop_timeout,
        log_file=settings.log_file,
        python=settings.python,
    )
