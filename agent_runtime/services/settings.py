"""The ``service`` section of the device config: which service manager runs the agent."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from fleetbase.duration import Duration

__all__ = [
    "DEFAULT_LAUNCHD_LABEL",
    "DEFAULT_SYSTEMD_UNIT",
    "DEFAULT_WINDOWS_SERVICE",
    "ManagerName",
    "ServiceSettings",
]

DEFAULT_SYSTEMD_UNIT = "wegweiser-persistent-agent.service"
DEFAULT_WINDOWS_SERVICE = "WegweiserServiceHost"
DEFAULT_LAUNCHD_LABEL = "com.wegweiser.persistent-agent"

ManagerName = Literal["process", "systemd", "windows", "launchd"]


class ServiceSettings(BaseModel):
    """How the runtime starts, stops and watches the agent on this device."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    manager: ManagerName = Field(
        default="process",
        description="process: the runtime supervises the agent itself (tests, demo); "
        "systemd, windows (Service Control Manager) or launchd: the platform does",
    )
    unit: str = Field(default=DEFAULT_SYSTEMD_UNIT, description="systemd: the unit name")
    service_name: str = Field(
        default=DEFAULT_WINDOWS_SERVICE, description="windows: the service's key name"
    )
    label: str = Field(default=DEFAULT_LAUNCHD_LABEL, description="launchd: the job label")
    launchd_domain: str = Field(default="system", description="launchd: the domain target")
    plist: Path | None = Field(
        default=None,
        description="launchd: the job's plist, to load it when it is not loaded; "
        "default /Library/LaunchDaemons/<label>.plist",
    )
    stop_timeout: Duration = Field(
        default=timedelta(seconds=10),
        description="how long a graceful stop may take before the agent is killed",
    )
    start_timeout: Duration = Field(
        default=timedelta(seconds=30),
        description="windows: how long the service may stay START_PENDING",
    )
    command_timeout: Duration = Field(
        default=timedelta(seconds=120),
        description="limit for one call of systemctl / sc.exe / launchctl",
    )
    state_dir: Path | None = Field(
        default=None,
        description="process: directory for the pid file and the agent's log; "
        "default given by the runtime (its state directory)",
    )
    log_file: Path | None = Field(
        default=None,
        description="process: the agent's stdout/stderr; default <state_dir>/agent.log",
    )
    python: Path | None = Field(
        default=None,
        description="process: interpreter that replaces '{python}' in the release's command; "
        "default the runtime's own interpreter",
    )
