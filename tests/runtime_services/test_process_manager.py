"""The process service manager with real example-agent processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from agent_runtime.effects import RunSpec
from agent_runtime.errors import ServiceError
from agent_runtime.services import ProcessManager
from fleetbase.version import Version
from tests.runtime_services.conftest import REPO, install_release


def _wait_for(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def _heartbeat_version(run: RunSpec) -> str | None:
    try:
        data = json.loads((run.cwd / "heartbeat.json").read_text())
    except (FileNotFoundError, ValueError):
        return None
    version = data["version"]
    assert isinstance(version, str)
    return version


def test_ensure_running_starts_agent_and_writes_pid_file(
    tmp_path: Path, process_manager: ProcessManager
) -> None:
    """ensure_running starts a stopped agent once, records pid and create time, and it beats."""
    run = install_release("3.0.1", tmp_path / "agent")
    assert not process_manager.is_running()
    assert process_manager.ensure_running(run) is True
    assert process_manager.is_running()
    record = json.loads(process_manager.pid_file.read_text())
    proc = psutil.Process(record["pid"])
    assert record["create_time"] == pytest.approx(proc.create_time(), abs=0.01)
    assert proc.cwd() == str(run.cwd)
    assert process_manager.ensure_running(run) is False
    assert process_manager.pid() == record["pid"]
    _wait_for(lambda: _heartbeat_version(run) == "3.0.1")


def test_new_manager_finds_running_agent_by_pid_file(
    tmp_path: Path, process_manager: ProcessManager, managers: list[ProcessManager]
) -> None:
    """A second manager on the same state directory sees the agent and does not start another."""
    run = install_release("3.0.1", tmp_path / "agent")
    process_manager.ensure_running(run)
    pid = process_manager.pid()
    again = ProcessManager(process_manager.state_dir, stop_timeout=5.0)
    managers.append(again)
    assert again.is_running()
    assert again.ensure_running(run) is False
    assert again.pid() == pid
    again.stop()
    assert not again.is_running()
    assert not process_manager.is_running()
    assert not again.pid_file.exists()


def test_agent_outlives_the_runtime_that_started_it(
    tmp_path: Path, managers: list[ProcessManager]
) -> None:
    """An agent started by a runtime process that exits keeps running; a later runtime stops it."""
    run = install_release("3.0.1", tmp_path / "agent")
    state = tmp_path / "state"
    script = (
        "import sys; from pathlib import Path\n"
        "from agent_runtime.effects import RunSpec\n"
        "from agent_runtime.services import ProcessManager\n"
        "from fleetbase.version import Version\n"
        f"run = RunSpec(cwd=Path({str(run.cwd)!r}), argv=['{{python}}', 'nats_agent.py'],"
        " version=Version('3.0.1'), env={'HEARTBEAT_INTERVAL': '0.2'})\n"
        f"print(ProcessManager(Path({str(state)!r})).ensure_running(run))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"
    later = ProcessManager(state, stop_timeout=5.0)
    managers.append(later)
    assert later.is_running()
    pid = later.pid()
    assert pid is not None
    _wait_for(lambda: _heartbeat_version(run) == "3.0.1")
    later.stop()
    assert not later.is_running()
    gone = not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert gone


def test_graceful_stop_lets_the_agent_exit_zero(
    tmp_path: Path, process_manager: ProcessManager
) -> None:
    """stop sends SIGTERM; the example agent exits 0 and logs that it stops."""
    run = install_release("3.0.1", tmp_path / "agent")
    process_manager.ensure_running(run)
    _wait_for(lambda: _heartbeat_version(run) == "3.0.1")
    process_manager.stop()
    ended = process_manager.last_exit()
    assert ended is not None
    assert ended.code == 0
    assert "agent 3.0.1 stopping" in process_manager.log_file.read_text()
    assert not process_manager.pid_file.exists()
    process_manager.stop()  # stopping a stopped agent is no error


def test_stop_kills_an_agent_that_ignores_sigterm(
    tmp_path: Path, managers: list[ProcessManager]
) -> None:
    """An agent ignoring SIGTERM is killed after stop_timeout."""
    (tmp_path / "stubborn").mkdir()
    (tmp_path / "stubborn" / "stubborn.py").write_text(
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "time.sleep(120)\n"
    )
    manager = ProcessManager(tmp_path / "state", stop_timeout=0.5)
    managers.append(manager)
    run = RunSpec(cwd=tmp_path / "stubborn", argv=["{python}", "stubborn.py"], version=Version("1"))
    manager.ensure_running(run)
    _wait_for(lambda: "ready" in manager.log_file.read_text())
    pid = manager.pid()
    manager.stop()
    ended = manager.last_exit()
    assert ended is not None
    assert ended.code == -signal.SIGKILL
    assert ended.describe() == f"was killed by signal {int(signal.SIGKILL)}"
    assert pid is not None and not psutil.pid_exists(pid)


def test_restart_runs_a_new_process(tmp_path: Path, process_manager: ProcessManager) -> None:
    """restart stops the old agent process and starts a new one with the new release."""
    old = install_release("3.0.0", tmp_path / "v300")
    new = install_release("3.0.1", tmp_path / "v301")
    process_manager.ensure_running(old)
    first = process_manager.pid()
    _wait_for(lambda: _heartbeat_version(old) == "3.0.0")
    process_manager.restart(new)
    second = process_manager.pid()
    assert second is not None and second != first
    assert first is not None and not psutil.pid_exists(first)
    _wait_for(lambda: _heartbeat_version(new) == "3.0.1")
    assert json.loads(process_manager.pid_file.read_text())["version"] == "3.0.1"


def test_ensure_running_restarts_a_killed_agent(
    tmp_path: Path, process_manager: ProcessManager
) -> None:
    """After SIGKILL the agent counts as stopped and ensure_running starts a new one."""
    run = install_release("3.0.1", tmp_path / "agent")
    process_manager.ensure_running(run)
    pid = process_manager.pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    _wait_for(lambda: not process_manager.is_running())
    ended = process_manager.last_exit()
    assert ended is not None and ended.code == -signal.SIGKILL
    assert process_manager.ensure_running(run) is True
    assert process_manager.pid() not in (None, pid)


def test_zombie_agent_is_not_running(
    tmp_path: Path, process_manager: ProcessManager, managers: list[ProcessManager]
) -> None:
    """An exited but unreaped agent (zombie) is reported as not running by another manager."""
    run = install_release("3.0.1", tmp_path / "agent")
    process_manager.ensure_running(run)
    pid = process_manager.pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    _wait_for(lambda: psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    other = ProcessManager(process_manager.state_dir)
    managers.append(other)
    assert not other.is_running()


def test_recycled_pid_is_not_mistaken_for_the_agent(
    tmp_path: Path, process_manager: ProcessManager
) -> None:
    """A pid file naming a live process with another create time: not running; stop spares it."""
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        process_manager.state_dir.mkdir(parents=True)
        record = {"pid": bystander.pid, "create_time": 12345.0}
        process_manager.pid_file.write_text(json.dumps(record))
        assert not process_manager.is_running()
        process_manager.stop()
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_broken_pid_file_counts_as_not_running(
    tmp_path: Path, process_manager: ProcessManager
) -> None:
    """A garbled pid file is ignored and replaced when the agent is started."""
    process_manager.state_dir.mkdir(parents=True)
    process_manager.pid_file.write_text("{not json")
    assert not process_manager.is_running()
    run = install_release("3.0.1", tmp_path / "agent")
    assert process_manager.ensure_running(run) is True
    assert isinstance(json.loads(process_manager.pid_file.read_text())["pid"], int)


def test_start_without_command_is_refused(tmp_path: Path, process_manager: ProcessManager) -> None:
    """A release without a command cannot be run by the process manager; nothing is started."""
    run = RunSpec(cwd=tmp_path, argv=[], version=Version("3.0.1"))
    with pytest.raises(ServiceError, match="needs the release's 'command'"):
        process_manager.ensure_running(run)
    assert not process_manager.pid_file.exists()


def test_start_in_missing_directory_raises_service_error(
    tmp_path: Path, process_manager: ProcessManager
) -> None:
    """A missing agent directory is a ServiceError naming it, and leaves no pid file."""
    run = RunSpec(cwd=tmp_path / "nope", argv=["{python}", "x.py"], version=Version("3.0.1"))
    with pytest.raises(ServiceError, match="nope"):
        process_manager.restart(run)
    assert not process_manager.pid_file.exists()


def _agents_in(directory: Path) -> list[int]:
    """Pids of live example-agent processes running in ``directory``."""
    found = []
    for proc in psutil.process_iter(["cwd", "cmdline", "status"]):
        info = proc.info
        if info.get("status") == psutil.STATUS_ZOMBIE:
            continue
        if info.get("cwd") == str(directory) and "nats_agent.py" in " ".join(
            info.get("cmdline") or []
        ):
            found.append(proc.pid)
    return found


@pytest.fixture
def orphans_killed(tmp_path: Path) -> Iterator[None]:
    """Kill any agent still running under tmp_path at teardown (even when a test failed)."""
    yield
    base = str(tmp_path)
    for proc in psutil.process_iter(["cwd"]):
        if (proc.info.get("cwd") or "").startswith(base) and proc.pid != os.getpid():
            with contextlib.suppress(psutil.Error):
                proc.kill()


def _start_and_die(run: RunSpec, state: Path) -> subprocess.CompletedProcess[str]:
    """A runtime process that starts the agent and is SIGKILLed between spawn and pid file."""
    script = (
        "from pathlib import Path\n"
        "from agent_runtime.effects import RunSpec\n"
        "from agent_runtime.services import ProcessManager\n"
        "from fleetbase.version import Version\n"
        f"run = RunSpec(cwd=Path({str(run.cwd)!r}), argv=['{{python}}', 'nats_agent.py'],"
        " version=Version('3.0.1'), env={'HEARTBEAT_INTERVAL': '0.2'})\n"
        f"ProcessManager(Path({str(state)!r})).ensure_running(run)\n"
    )
    env = {**os.environ, "AGENT_RUNTIME_FAULT": "process.spawned=kill"}
    return subprocess.run(
        [sys.executable, "-c", script], check=False, cwd=REPO, env=env,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_runtime_killed_between_spawn_and_pid_file_leaves_no_untracked_agent(
    tmp_path: Path, managers: list[ProcessManager], orphans_killed: None
) -> None:
    """SIGKILLed after spawning the agent but before writing its pid file: the next runtime
    adopts that agent into the pid file and does not start a second one."""
    run = install_release("3.0.1", tmp_path / "agent")
    state = tmp_path / "state"
    died = _start_and_die(run, state)
    assert died.returncode == -signal.SIGKILL, died.stderr
    assert not (state / "agent.pid").exists() and (state / "agent.launch").exists()
    _wait_for(lambda: len(_agents_in(run.cwd)) == 1)
    (orphan,) = _agents_in(run.cwd)
    later = ProcessManager(state, stop_timeout=5.0)
    managers.append(later)
    assert later.ensure_running(run) is False
    assert later.pid() == orphan
    record = json.loads((state / "agent.pid").read_text())
    assert record["pid"] == orphan
    assert record["create_time"] == pytest.approx(psutil.Process(orphan).create_time(), abs=0.01)
    assert not (state / "agent.launch").exists()
    assert _agents_in(run.cwd) == [orphan]
    later.stop()
    assert _agents_in(run.cwd) == [] and not (state / "agent.pid").exists()


def test_restart_after_a_kill_between_spawn_and_pid_file_stops_the_orphan(
    tmp_path: Path, managers: list[ProcessManager], orphans_killed: None
) -> None:
    """restart() after such a crash stops the orphaned agent before starting the new one:
    exactly one agent runs, the one the pid file names."""
    run = install_release("3.0.1", tmp_path / "agent")
    state = tmp_path / "state"
    assert _start_and_die(run, state).returncode == -signal.SIGKILL
    _wait_for(lambda: len(_agents_in(run.cwd)) == 1)
    (orphan,) = _agents_in(run.cwd)
    later = ProcessManager(state, stop_timeout=5.0)
    managers.append(later)
    later.restart(run)
    pid = later.pid()
    assert pid is not None and pid != orphan
    assert not psutil.pid_exists(orphan) or psutil.Process(orphan).status() == "zombie"
    assert _agents_in(run.cwd) == [pid]


def test_launch_record_without_a_process_is_dropped(
    tmp_path: Path, process_manager: ProcessManager, orphans_killed: None
) -> None:
    """A launch record whose spawn never happened is dropped; the agent is then started once."""
    run = install_release("3.0.1", tmp_path / "agent")
    state = process_manager.state_dir
    state.mkdir(parents=True)
    (state / "agent.launch").write_text(json.dumps({
        "launch_id": "0" * 32, "argv": [sys.executable, "nats_agent.py"], "cwd": str(run.cwd),
        "version": "3.0.1", "runtime_create_time": 0.0,
    }))  # fmt: skip
    assert not process_manager.is_running()
    assert not (state / "agent.launch").exists() and not (state / "agent.pid").exists()
    assert process_manager.ensure_running(run) is True
    assert _agents_in(run.cwd) == [process_manager.pid()]


def test_orphan_found_by_argv_and_cwd_when_its_environment_is_unreadable(
    tmp_path: Path,
    managers: list[ProcessManager],
    monkeypatch: pytest.MonkeyPatch,
    orphans_killed: None,
) -> None:
    """Where a process's environment cannot be read (AccessDenied, e.g. macOS hardening), the
    orphan is recognised by the recorded argv and cwd, created after the launching runtime."""
    run = install_release("3.0.1", tmp_path / "agent")
    state = tmp_path / "state"
    assert _start_and_die(run, state).returncode == -signal.SIGKILL
    _wait_for(lambda: len(_agents_in(run.cwd)) == 1)
    (orphan,) = _agents_in(run.cwd)

    def denied(self: psutil.Process) -> dict[str, str]:
        raise psutil.AccessDenied(self.pid)

    monkeypatch.setattr(psutil.Process, "environ", denied)
    later = ProcessManager(state, stop_timeout=5.0)
    managers.append(later)
    assert later.pid() == orphan
    assert later.ensure_running(run) is False
    assert _agents_in(run.cwd) == [orphan]
