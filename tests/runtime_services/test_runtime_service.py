"""agent-runtime's own OS service: the exact systemd unit, launchd plist and sc.exe command
lines, and the commands install/uninstall issue (the tools cannot run here: a fake runner
answers as they document); the unit also passes `systemd-analyze verify` when available."""

from __future__ import annotations

import plistlib
import shutil
import subprocess
from pathlib import Path

import pytest

from agent_runtime.errors import ServiceError
from agent_runtime.services.runtime_service import (
    RuntimeService,
    launchd_plist,
    systemd_unit,
    windows_create_commands,
    windows_delete_commands,
)
from tests.runtime_services.conftest import FakeRunner, out

EXE = Path("/opt/agent-runtime/bin/agent-runtime")
CONFIG = Path("/etc/agent-runtime/config.yaml")
LOG = Path("/var/lib/agent-runtime/runtime.log")

UNIT = """\
[Unit]
Description=agent-runtime: converges this device's agent to its planned release
Documentation=https://github.com/fleet-rollout/fleet-rollout/blob/main/docs/install.md
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
ExecStart=/opt/agent-runtime/bin/agent-runtime converge --config /etc/agent-runtime/config.yaml
Restart=always
RestartSec=10
KillMode=process
TimeoutStopSec=60

[Install]
WantedBy=multi-user.target
"""


def test_systemd_unit_is_exactly_this() -> None:
    """The unit runs `converge --config`, restarts always, and never kills the agent's unit."""
    assert systemd_unit(EXE, CONFIG) == UNIT


def test_systemd_unit_quotes_paths_with_spaces() -> None:
    """A path with a space is double-quoted in ExecStart."""
    unit = systemd_unit(Path("/opt/my runtime/bin/agent-runtime"), CONFIG)
    assert 'ExecStart="/opt/my runtime/bin/agent-runtime" converge --config' in unit


def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """`systemd-analyze verify` accepts the generated unit (with an existing executable)."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (scripts/setup installs it as root)")
    exe = tmp_path / "agent-runtime"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    unit = tmp_path / "agent-runtime.service"
    unit.write_text(systemd_unit(exe, CONFIG))
    proc = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    problems = [line for line in proc.stderr.splitlines() if "agent-runtime.service" in line]
    assert proc.returncode == 0 and not problems, proc.stderr


def test_launchd_plist_is_exactly_this() -> None:
    """The plist is a KeepAlive daemon running `converge --config`, logging to the state dir."""
    assert plistlib.loads(launchd_plist(EXE, CONFIG, LOG)) == {
        "Label": "org.fleet-rollout.agent-runtime",
        "ProgramArguments": [str(EXE), "converge", "--config", str(CONFIG)],
        "RunAtLoad": True,
        "KeepAlive": True,
        "ThrottleInterval": 10,
        "ExitTimeOut": 60,
        "StandardOutPath": str(LOG),
        "StandardErrorPath": str(LOG),
    }
    assert launchd_plist(EXE, CONFIG, LOG).startswith(b'<?xml version="1.0" encoding="UTF-8"?>')


PYW = Path("C:/Program Files/AgentRuntime/Scripts/pythonw.exe")
WCONF = Path("C:/ProgramData/AgentRuntime/config.yaml")
BIN = (
    '"C:/Program Files/AgentRuntime/Scripts/pythonw.exe" -m agent_runtime.winservice '
    '--config "C:/ProgramData/AgentRuntime/config.yaml"'
)
CREATE = [
    ["sc.exe", "create", "AgentRuntime", "binPath=", BIN, "start=", "auto",
     "DisplayName=", "Agent Runtime"],
    ["sc.exe", "description", "AgentRuntime",
     "Converges this device's agent to its planned release (agent-runtime)."],
    ["sc.exe", "failure", "AgentRuntime", "reset=", "86400",
     "actions=", "restart/10000/restart/10000/restart/60000"],
    ["sc.exe", "start", "AgentRuntime"],
]  # fmt: skip


def test_windows_commands_are_exactly_these() -> None:
    """sc.exe create (auto start, the SCM wrapper), description, failure actions, start."""
    assert windows_create_commands(PYW, WCONF) == CREATE
    assert windows_delete_commands() == [
        ["sc.exe", "stop", "AgentRuntime"],
        ["sc.exe", "delete", "AgentRuntime"],
    ]


NEED_RELOAD = ["systemctl", "show", "--property=NeedDaemonReload", "--value",
               "agent-runtime.service"]  # fmt: skip


def test_systemd_install_writes_the_unit_and_is_idempotent(tmp_path: Path) -> None:
    """First install stops whatever runs under the name (5: not loaded), writes the unit,
    reloads and enables + starts it; the second finds it loaded as written and only
    re-enables."""
    runner = FakeRunner([
        (["systemctl", "stop", "agent-runtime.service"], out([], 5)),
        (["systemctl", "daemon-reload"], out([])),
        (["systemctl", "enable", "--now", "agent-runtime.service"], out([])),
        (NEED_RELOAD, out([], 0, "no\n")),
        (["systemctl", "enable", "--now", "agent-runtime.service"], out([])),
    ])  # fmt: skip
    svc = RuntimeService("systemd", executable=EXE, config=CONFIG, log=LOG, directory=tmp_path,
                         runner=runner)  # fmt: skip
    assert svc.install().changed
    assert (tmp_path / "agent-runtime.service").read_text() == UNIT
    assert not svc.install().changed
    assert runner.done()


def test_systemd_install_finishes_an_interrupted_one(tmp_path: Path) -> None:
    """A unit written by a run that stopped before its reload (NeedDaemonReload=yes) is
    reloaded and restarted, so the service does not go on with its old command line."""
    (tmp_path / "agent-runtime.service").write_text(UNIT)
    runner = FakeRunner([
        (NEED_RELOAD, out([], 0, "yes\n")),
        (["systemctl", "daemon-reload"], out([])),
        (["systemctl", "restart", "agent-runtime.service"], out([])),
        (["systemctl", "enable", "--now", "agent-runtime.service"], out([])),
    ])  # fmt: skip
    svc = RuntimeService("systemd", executable=EXE, config=CONFIG, log=LOG, directory=tmp_path,
                         runner=runner)  # fmt: skip
    change = svc.install()
    assert change.changed and change.detail == "systemd agent-runtime.service installed and started"
    assert runner.done()


def test_systemd_install_refused_names_the_command(tmp_path: Path) -> None:
    """A failing stop (not 'not loaded') is a ServiceError and the unit is not written."""
    runner = FakeRunner([
        (["systemctl", "stop", "agent-runtime.service"], out([], 1, "", "Access denied\n")),
    ])  # fmt: skip
    svc = RuntimeService("systemd", executable=EXE, config=CONFIG, log=LOG, directory=tmp_path,
                         runner=runner)  # fmt: skip
    with pytest.raises(ServiceError, match=r"systemctl stop agent-runtime\.service"):
        svc.install()
    assert not (tmp_path / "agent-runtime.service").exists()


def test_systemd_uninstall_removes_the_unit(tmp_path: Path) -> None:
    """uninstall disables and stops the unit, deletes it and reloads; twice is harmless."""
    (tmp_path / "agent-runtime.service").write_text(UNIT)
    runner = FakeRunner([
        (["systemctl", "disable", "--now", "agent-runtime.service"], out([])),
        (["systemctl", "daemon-reload"], out([])),
        (["systemctl", "disable", "--now", "agent-runtime.service"], out([], 5)),
    ])  # fmt: skip
    svc = RuntimeService("systemd", executable=EXE, config=CONFIG, log=LOG, directory=tmp_path,
                         runner=runner)  # fmt: skip
    assert svc.uninstall().changed
    assert not (tmp_path / "agent-runtime.service").exists()
    assert not svc.uninstall().changed
    assert runner.done()


def test_launchd_install_bootstraps_and_is_idempotent(tmp_path: Path) -> None:
    """A job not loaded is bootstrapped from the written plist; once loaded nothing runs."""
    target = "system/org.fleet-rollout.agent-runtime"
    plist = tmp_path / "org.fleet-rollout.agent-runtime.plist"
    runner = FakeRunner([
        (["launchctl", "print", target], out([], 113)),
        (["launchctl", "bootstrap", "system", str(plist)], out([])),
        (["launchctl", "print", target], out([], 0, "state = running\n")),
    ])  # fmt: skip
    svc = RuntimeService("launchd", executable=EXE, config=CONFIG, log=LOG, directory=tmp_path,
                         runner=runner)  # fmt: skip
    assert svc.install().changed
    assert plist.read_bytes() == launchd_plist(EXE, CONFIG, LOG)
    assert not svc.install().changed
    assert runner.done()


def test_windows_install_creates_and_second_install_only_starts() -> None:
    """A missing service (sc.exe qc: 1060) is created with the exact commands; one whose
    binPath is already ours is only started (1056: already running is fine)."""
    runner = FakeRunner([
        (["sc.exe", "qc", "AgentRuntime"], out([], 1060)),
        *[(argv, out([])) for argv in CREATE],
        (["sc.exe", "qc", "AgentRuntime"], out([], 0, f"BINARY_PATH_NAME   : {BIN}\n")),
        (["sc.exe", "start", "AgentRuntime"], out([], 1056)),
    ])  # fmt: skip
    svc = RuntimeService("windows", executable=PYW, config=WCONF, log=LOG, runner=runner)
    assert svc.install().changed
    assert not svc.install().changed
    assert runner.done()


def test_windows_install_failure_names_the_command() -> None:
    """Access denied (5) from sc.exe create is a ServiceError quoting the command."""
    runner = FakeRunner([
        (["sc.exe", "qc", "AgentRuntime"], out([], 1060)),
        (CREATE[0], out([], 5, "[SC] OpenSCManager FAILED 5:\n\nAccess is denied.\n")),
    ])  # fmt: skip
    svc = RuntimeService("windows", executable=PYW, config=WCONF, log=LOG, runner=runner)
    with pytest.raises(ServiceError, match=r"sc.exe create AgentRuntime.*Access is denied"):
        svc.install()
