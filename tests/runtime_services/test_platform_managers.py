"""systemd, Windows SCM and launchd managers: the exact commands issued and how answers are read.

These tools cannot run here; a fake runner answers with the tools' documented output.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from agent_runtime.effects import RunSpec
from agent_runtime.errors import ServiceError
from agent_runtime.services import LaunchdManager, SystemdManager, WindowsServiceManager
from fleetbase.version import Version
from tests.runtime_services.conftest import Answer, FakeRunner, FakeTime, out

RUN = RunSpec(cwd=Path("/opt/Wegweiser/Agent"), argv=[], version=Version("3.0.1"))

# -- systemd --------------------------------------------------------------------------------

UNIT = "wegweiser-persistent-agent.service"
IS_ACTIVE = ["systemctl", "is-active", UNIT]


def systemd(*script: tuple[list[str], Answer]) -> tuple[SystemdManager, FakeRunner]:
    """A SystemdManager on the default unit answering ``script``."""
    runner = FakeRunner(list(script))
    return SystemdManager(runner=runner), runner


def test_systemd_restart_issues_systemctl_restart() -> None:
    """restart runs exactly `systemctl restart <unit>`."""
    manager, runner = systemd((["systemctl", "restart", UNIT], out([], 0)))
    manager.restart(RUN)
    assert runner.calls == [["systemctl", "restart", UNIT]]


def test_systemd_restart_of_missing_unit_says_not_installed() -> None:
    """Exit code 5 (unit not found) is a ServiceError naming the unit."""
    said = f"Failed to restart {UNIT}: Unit {UNIT} not found.\n"
    manager, _ = systemd((["systemctl", "restart", UNIT], out([], 5, stderr=said)))
    with pytest.raises(ServiceError, match=f"unit {UNIT} is not installed.*not found"):
        manager.restart(RUN)


def test_systemd_restart_failure_reports_systemctl_output() -> None:
    """A failed start job (exit 1) is a ServiceError quoting systemctl."""
    said = (
        f"Job for {UNIT} failed because the control process exited with error code.\n"
        f'See "systemctl status {UNIT}" and "journalctl -xeu {UNIT}" for details.\n'
    )
    manager, _ = systemd((["systemctl", "restart", UNIT], out([], 1, stderr=said)))
    with pytest.raises(ServiceError, match="exited with code 1: Job for"):
        manager.restart(RUN)


@pytest.mark.parametrize(
    ("stdout", "code", "running"),
    [
        ("active\n", 0, True),
        ("reloading\n", 0, True),
        ("inactive\n", 3, False),
        ("failed\n", 3, False),
        ("activating\n", 3, False),
        ("deactivating\n", 3, False),
        ("unknown\n", 4, False),
    ],
)
def test_systemd_is_running_reads_is_active(stdout: str, code: int, running: bool) -> None:
    """is_running runs `systemctl is-active <unit>` and reads its one-word state."""
    manager, runner = systemd((IS_ACTIVE, out([], code, stdout=stdout)))
    assert manager.is_running() is running
    assert runner.calls == [IS_ACTIVE]


def test_systemd_is_running_without_a_state_is_an_error() -> None:
    """No state word (systemd unreachable) is a ServiceError, not 'stopped'."""
    said = "System has not been booted with systemd as init system (PID 1). Can't operate.\n"
    manager, _ = systemd((IS_ACTIVE, out([], 1, stderr=said)))
    with pytest.raises(ServiceError, match=r"cannot tell whether .* runs.*not been booted"):
        manager.is_running()


def test_systemd_ensure_running_starts_inactive_unit() -> None:
    """ensure_running on an inactive unit issues is-active then start, and returns True."""
    manager, runner = systemd(
        (IS_ACTIVE, out([], 3, stdout="inactive\n")),
        (["systemctl", "start", UNIT], out([], 0)),
    )
    assert manager.ensure_running(RUN) is True
    assert runner.done()


def test_systemd_ensure_running_leaves_active_unit_alone() -> None:
    """ensure_running on an active unit issues only is-active and returns False."""
    manager, runner = systemd((IS_ACTIVE, out([], 0, stdout="active\n")))
    assert manager.ensure_running(RUN) is False
    assert runner.calls == [IS_ACTIVE]


@pytest.mark.parametrize("code", [0, 5])
def test_systemd_stop_accepts_stopped_or_unloaded(code: int) -> None:
    """stop runs `systemctl stop <unit>`; a unit that is not loaded counts as stopped."""
    manager, runner = systemd((["systemctl", "stop", UNIT], out([], code)))
    manager.stop()
    assert runner.done()


def test_systemd_stop_failure_is_an_error() -> None:
    """stop refused (access denied) is a ServiceError."""
    said = f"Failed to stop {UNIT}: Access denied\n"
    manager, _ = systemd((["systemctl", "stop", UNIT], out([], 4, stderr=said)))
    with pytest.raises(ServiceError, match="Access denied"):
        manager.stop()


def test_systemd_timeout_and_missing_tool_are_service_errors() -> None:
    """A hanging systemctl or a missing one becomes a ServiceError, not a crash."""
    manager, _ = systemd(
        (["systemctl", "restart", UNIT], subprocess.TimeoutExpired(["systemctl"], 120)),
        (IS_ACTIVE, FileNotFoundError(2, "No such file or directory", "systemctl")),
    )
    with pytest.raises(ServiceError, match="did not finish within 120s"):
        manager.restart(RUN)
    with pytest.raises(ServiceError, match="cannot run `systemctl is-active"):
        manager.is_running()


def test_systemd_custom_unit_name() -> None:
    """The unit comes from the settings."""
    runner = FakeRunner([(["systemctl", "restart", "my-agent.service"], out([], 0))])
    SystemdManager("my-agent.service", runner=runner).restart(RUN)
    assert runner.done()


# -- windows --------------------------------------------------------------------------------

SVC = "WegweiserServiceHost"
QUERY = ["sc.exe", "queryex", SVC]


def sc_state(code: int, name: str, pid: int = 0, exit_code: int = 0) -> str:
    """`sc.exe queryex` output as Windows prints it."""
    return (
        f"\nSERVICE_NAME: {SVC}\n"
        "        TYPE               : 10  WIN32_OWN_PROCESS\n"
        f"        STATE              : {code}  {name}\n"
        "                                (STOPPABLE, NOT_PAUSABLE, ACCEPTS_SHUTDOWN)\n"
        f"        WIN32_EXIT_CODE    : {exit_code}  (0x{exit_code:x})\n"
        "        SERVICE_EXIT_CODE  : 0  (0x0)\n"
        "        CHECKPOINT         : 0x0\n"
        "        WAIT_HINT          : 0x0\n"
        f"        PID                : {pid}\n"
        "        FLAGS              :\n"
    )


RUNNING = out([], 0, stdout=sc_state(4, "RUNNING", pid=4242))
STOPPED = out([], 0, stdout=sc_state(1, "STOPPED"))
STOP_PENDING = out([], 0, stdout=sc_state(3, "STOP_PENDING", pid=4242))
START_PENDING = out([], 0, stdout=sc_state(2, "START_PENDING", pid=4343))
NOT_INSTALLED = out(
    [],
    1060,
    stdout="[SC] EnumQueryServicesStatus:OpenService FAILED 1060:\n\n"
    "The specified service does not exist as an installed service.\n\n",
)


def windows(
    *script: tuple[list[str], Answer], stop_timeout: float = 10.0
) -> tuple[WindowsServiceManager, FakeRunner]:
    """A WindowsServiceManager on the default service answering ``script`` in fake time."""
    runner = FakeRunner(list(script))
    clock = FakeTime()
    manager = WindowsServiceManager(
        runner=runner,
        stop_timeout=stop_timeout,
        start_timeout=30.0,
        sleep=clock.sleep,
        monotonic=clock.monotonic,
    )
    return manager, runner


def test_windows_restart_stops_waits_starts_and_waits() -> None:
    """restart: sc stop, poll queryex until STOPPED, sc start, poll until RUNNING."""
    manager, runner = windows(
        (QUERY, RUNNING),
        (["sc.exe", "stop", SVC], STOP_PENDING),
        (QUERY, STOP_PENDING),
        (QUERY, STOPPED),
        (QUERY, STOPPED),
        (["sc.exe", "start", SVC], START_PENDING),
        (QUERY, START_PENDING),
        (QUERY, RUNNING),
    )
    manager.restart(RUN)
    assert runner.done()


def test_windows_stop_kills_a_hanging_service_process() -> None:
    """A service stuck in STOP_PENDING past stop_timeout gets `taskkill /F /PID <pid>`."""
    pending = [(QUERY, STOP_PENDING)] * 3  # at 0s, 0.5s, 1.0s: timeout 1s reached
    manager, runner = windows(
        (QUERY, RUNNING),
        (["sc.exe", "stop", SVC], STOP_PENDING),
        *pending,
        (["taskkill.exe", "/F", "/PID", "4242"], out([], 0, stdout="SUCCESS")),
        (QUERY, STOPPED),
        stop_timeout=1.0,
    )
    manager.stop()
    assert runner.done()


def test_windows_stop_of_stopped_service_does_nothing() -> None:
    """stop on a STOPPED (or missing) service issues only the query."""
    manager, runner = windows((QUERY, STOPPED), (QUERY, NOT_INSTALLED))
    manager.stop()
    manager.stop()
    assert runner.calls == [QUERY, QUERY]


def test_windows_stop_racing_a_service_that_just_stopped() -> None:
    """sc stop answering 1062 (not started) is fine when the service then reads STOPPED."""
    said = "[SC] ControlService FAILED 1062:\n\nThe service has not been started.\n"
    manager, runner = windows(
        (QUERY, RUNNING), (["sc.exe", "stop", SVC], out([], 1062, stdout=said)), (QUERY, STOPPED)
    )
    manager.stop()
    assert runner.done()


def test_windows_access_denied_is_an_error() -> None:
    """sc stop refused with error 5 is a ServiceError quoting sc.exe."""
    said = "[SC] OpenService FAILED 5:\n\nAccess is denied.\n"
    manager, _ = windows((QUERY, RUNNING), (["sc.exe", "stop", SVC], out([], 5, stdout=said)))
    with pytest.raises(ServiceError, match=r"exited with code 5: .*Access is denied"):
        manager.stop()


def test_windows_start_that_stops_again_reports_exit_code() -> None:
    """A service that falls back to STOPPED after start is a ServiceError with WIN32_EXIT_CODE."""
    failed = out([], 0, stdout=sc_state(1, "STOPPED", exit_code=1067))
    manager, runner = windows(
        (QUERY, STOPPED),
        (QUERY, STOPPED),
        (["sc.exe", "start", SVC], START_PENDING),
        (QUERY, failed),
    )
    with pytest.raises(ServiceError, match=r"is STOPPED \(WIN32_EXIT_CODE 1067\)"):
        manager.ensure_running(RUN)
    assert runner.done()


def test_windows_missing_service_is_not_running_and_cannot_start() -> None:
    """Error 1060: is_running is False; ensure_running raises without issuing sc start."""
    manager, runner = windows(
        (QUERY, NOT_INSTALLED), (QUERY, NOT_INSTALLED), (QUERY, NOT_INSTALLED)
    )
    assert manager.is_running() is False
    with pytest.raises(ServiceError, match=f"{SVC} is not installed"):
        manager.ensure_running(RUN)
    assert ["sc.exe", "start", SVC] not in runner.calls


def test_windows_is_running_reads_state_code() -> None:
    """is_running is True only for STATE 4 RUNNING."""
    manager, _ = windows((QUERY, RUNNING), (QUERY, START_PENDING), (QUERY, STOPPED))
    assert [manager.is_running() for _ in range(3)] == [True, False, False]


def test_windows_unreadable_query_is_an_error() -> None:
    """queryex output without a STATE line is a ServiceError, not a guess."""
    manager, _ = windows((QUERY, out([], 0, stdout="garbage")))
    with pytest.raises(ServiceError, match="cannot query service"):
        manager.is_running()


# -- launchd --------------------------------------------------------------------------------

LABEL = "com.wegweiser.persistent-agent"
TARGET = f"system/{LABEL}"
PRINT = ["launchctl", "print", TARGET]


def launchctl_print(state: str, pid: int | None, last_exit: str) -> str:
    """`launchctl print system/<label>` output as macOS prints it (abridged)."""
    pid_line = f"\tpid = {pid}\n" if pid is not None else ""
    return (
        f"{TARGET} = {{\n"
        "\tactive count = 1\n"
        f"\tpath = /Library/LaunchDaemons/{LABEL}.plist\n"
        f"\tstate = {state}\n\n"
        "\tprogram = /usr/bin/python3\n"
        "\targuments = {\n\t\t/usr/bin/python3\n\t\tnats_agent.py\n\t}\n\n"
        "\tworking directory = /opt/Wegweiser/Agent\n\n"
        "\tdomain = system\n"
        "\tminimum runtime = 10\n"
        "\texit timeout = 5\n"
        "\truns = 1\n"
        f"{pid_line}"
        "\timmediate reason = speculative\n"
        f"\tlast exit code = {last_exit}\n"
        "}\n"
    )


NOT_LOADED = out(
    [], 113, stderr=f'Bad request.\nCould not find service "{LABEL}" in domain for system\n'
)


def launchd(*script: tuple[list[str], Answer]) -> tuple[LaunchdManager, FakeRunner]:
    """A LaunchdManager on the default label answering ``script``."""
    runner = FakeRunner(list(script))
    return LaunchdManager(runner=runner), runner


def test_launchd_restart_kickstarts_with_kill() -> None:
    """restart runs exactly `launchctl kickstart -k system/<label>`."""
    manager, runner = launchd((["launchctl", "kickstart", "-k", TARGET], out([], 0)))
    manager.restart(RUN)
    assert runner.done()


def test_launchd_restart_loads_a_job_that_is_not_loaded() -> None:
    """kickstart answering 113 (not loaded) is followed by bootstrap of the plist."""
    plist = f"/Library/LaunchDaemons/{LABEL}.plist"
    manager, runner = launchd(
        (["launchctl", "kickstart", "-k", TARGET], NOT_LOADED),
        (["launchctl", "bootstrap", "system", plist], out([], 0)),
    )
    manager.restart(RUN)
    assert runner.done()


@pytest.mark.parametrize(
    ("answer", "running"),
    [
        (out([], 0, stdout=launchctl_print("running", 4711, "(never exited)")), True),
        (out([], 0, stdout=launchctl_print("not running", None, "3")), False),
        (NOT_LOADED, False),
    ],
)
def test_launchd_is_running_reads_print(answer: Answer, running: bool) -> None:
    """is_running reads `state = ...` of `launchctl print`; a job not loaded is not running."""
    manager, runner = launchd((PRINT, answer))
    assert manager.is_running() is running
    assert runner.calls == [PRINT]


def test_launchd_status_reads_pid_and_last_exit_code() -> None:
    """status parses pid and last exit code."""
    manager, _ = launchd((PRINT, out([], 0, stdout=launchctl_print("not running", None, "3"))))
    status = manager.status()
    assert status is not None
    assert (status.state, status.pid, status.last_exit_code) == ("not running", None, 3)


def test_launchd_ensure_running_kickstarts_a_stopped_job() -> None:
    """ensure_running on a loaded, stopped job issues `kickstart system/<label>` (no -k)."""
    manager, runner = launchd(
        (PRINT, out([], 0, stdout=launchctl_print("not running", None, "0"))),
        (["launchctl", "kickstart", TARGET], out([], 0)),
    )
    assert manager.ensure_running(RUN) is True
    assert runner.done()


def test_launchd_ensure_running_leaves_a_running_job_alone() -> None:
    """ensure_running on a running job only prints its state."""
    manager, runner = launchd((PRINT, out([], 0, stdout=launchctl_print("running", 1, "0"))))
    assert manager.ensure_running(RUN) is False
    assert runner.calls == [PRINT]


@pytest.mark.parametrize("code", [0, 3, 113])
def test_launchd_stop_boots_out(code: int) -> None:
    """stop runs `launchctl bootout system/<label>`; not loaded counts as stopped."""
    manager, runner = launchd((["launchctl", "bootout", TARGET], out([], code)))
    manager.stop()
    assert runner.done()


def test_launchd_stop_failure_is_an_error() -> None:
    """bootout failing otherwise is a ServiceError quoting launchctl."""
    said = "Boot-out failed: 5: Input/output error\n"
    manager, _ = launchd((["launchctl", "bootout", TARGET], out([], 5, stderr=said)))
    with pytest.raises(ServiceError, match="Input/output error"):
        manager.stop()
