"""ServiceSettings (the device config's `service` section) and the manager factory."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from agent_runtime.errors import ServiceError
from agent_runtime.services import (
    LaunchdManager,
    ProcessManager,
    ServiceSettings,
    SystemdManager,
    WindowsServiceManager,
    make_service_manager,
)


def test_defaults_name_the_field_services() -> None:
    """Defaults: the process manager, and the unit/service names agents in the field use."""
    settings = ServiceSettings()
    assert settings.manager == "process"
    assert settings.unit == "wegweiser-persistent-agent.service"
    assert settings.service_name == "WegweiserServiceHost"
    assert settings.stop_timeout.total_seconds() == 10


def test_unknown_key_and_unknown_manager_are_refused() -> None:
    """A typo'd key or manager name fails validation (extra='forbid', Literal)."""
    with pytest.raises(ValidationError, match="stop_timout"):
        ServiceSettings.model_validate({"manager": "systemd", "stop_timout": "5s"})
    with pytest.raises(ValidationError, match="'process', 'systemd', 'windows' or 'launchd'"):
        ServiceSettings.model_validate({"manager": "upstart"})


def test_durations_are_written_like_the_rest_of_the_config() -> None:
    """stop_timeout accepts '1m30s'."""
    settings = ServiceSettings.model_validate({"manager": "windows", "stop_timeout": "1m30s"})
    assert settings.stop_timeout.total_seconds() == 90


def test_factory_builds_each_manager(tmp_path: Path) -> None:
    """make_service_manager returns the manager the settings name, configured from them."""
    systemd = make_service_manager(ServiceSettings(manager="systemd", unit="a.service"))
    assert isinstance(systemd, SystemdManager) and systemd.unit == "a.service"
    windows = make_service_manager(
        ServiceSettings.model_validate({"manager": "windows", "stop_timeout": "20s"})
    )
    assert isinstance(windows, WindowsServiceManager) and windows.stop_timeout == 20
    launchd = make_service_manager(ServiceSettings(manager="launchd", label="org.example.a"))
    assert isinstance(launchd, LaunchdManager) and launchd.target == "system/org.example.a"
    assert launchd.plist == Path("/Library/LaunchDaemons/org.example.a.plist")
    process = make_service_manager(ServiceSettings(), default_state_dir=tmp_path)
    assert isinstance(process, ProcessManager) and process.pid_file == tmp_path / "agent.pid"
    explicit = make_service_manager(
        ServiceSettings(state_dir=tmp_path / "s", log_file=tmp_path / "a.log"),
        default_state_dir=tmp_path,
    )
    assert isinstance(explicit, ProcessManager)
    assert explicit.state_dir == tmp_path / "s" and explicit.log_file == tmp_path / "a.log"


def test_process_manager_needs_a_state_dir() -> None:
    """Without any state directory the process manager cannot keep its pid file."""
    with pytest.raises(ServiceError, match=r"needs service\.state_dir"):
        make_service_manager(ServiceSettings())
