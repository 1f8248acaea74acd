"""The ``process`` service manager: the runtime starts and supervises the agent itself.

The agent is started detached (its own session), so it outlives the runtime;
a pid file holding the pid *and* the process's creation time lets a later
runtime find it again without mistaking a recycled pid for the agent.

A runtime killed between spawning the agent and writing its pid file must not
leave an agent nobody tracks (a later runtime would start a second one).
So each start is announced first: a launch record (``agent.launch``, written
atomically) names a fresh launch id, which the agent receives in its
environment (``AGENT_RUNTIME_LAUNCH_ID``); the record is removed once the pid
file is written. A manager that finds a launch record left behind looks for
the process carrying that launch id (or, when its environment cannot be read,
the recorded argv and cwd, created after the launching runtime) and adopts it
into the pid file; with no such process the record is dropped. See
docs/service-managers.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import psutil

from agent_runtime import faults
from agent_runtime._fsutil import atomic_write_bytes
from agent_runtime.effects import RunSpec
from agent_runtime.errors import ServiceError

__all__ = ["LAUNCH_FILE", "LAUNCH_ID_ENV", "PID_FILE", "ProcessExit", "ProcessManager"]

PID_FILE = "agent.pid"
#: The launch record: written before the agent is spawned, removed once the pid file is.
LAUNCH_FILE = "agent.launch"
#: Environment variable carrying the launch id into the agent (how an orphan is recognised).
LAUNCH_ID_ENV = "AGENT_RUNTIME_LAUNCH_ID"
LOG_FILE = "agent.log"
#: A log larger than this is moved to ``agent.log.1`` when the agent is started.
LOG_ROTATE_BYTES = 10 * 1024 * 1024
#: After SIGKILL, how long to wait for the process to disappear before giving up.
KILL_WAIT = 5.0
#: psutil derives creation times from clock ticks; equal within this is the same process.
CREATE_TIME_TOLERANCE = 0.01
_WAIT_POLL = 0.05


@dataclass(frozen=True)
class ProcessExit:
    """How the agent process this manager started last ended (code None: not our child)."""

    pid: int
    code: int | None

    def describe(self) -> str:
        """``exited with code 3`` or ``exited (exit code unknown)``."""
        if self.code is None:
            return "exited (exit code unknown)"
        if self.code < 0:
            return f"was killed by signal {-self.code}"
        return f"exited with code {self.code}"


class ProcessManager:
    """Runs the agent as a detached child process tracked by a pid file in ``state_dir``."""

    name = "process"

    def __init__(
        self,
        state_dir: Path,
        *,
        stop_timeout: float = 10.0,
        log_file: Path | None = None,
        python: Path | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.stop_timeout = stop_timeout
        self.log_file = log_file if log_file is not None else state_dir / LOG_FILE
        self.python = str(python) if python is not None else sys.executable
        self.pid_file = state_dir / PID_FILE
        self.launch_file = state_dir / LAUNCH_FILE
        self._child: subprocess.Popen[bytes] | None = None
        self._last_exit: ProcessExit | None = None

    # -- ServiceManager ---------------------------------------------------------------

    def restart(self, run: RunSpec) -> None:
        """Stop the agent (SIGTERM, then SIGKILL after ``stop_timeout``) and start ``run``."""
        self.stop()
        self._start(run)

    def stop(self) -> None:
        """Stop the agent if it runs and forget its pid file; no error when it was not running."""
        proc = self._running_process()
        if proc is not None:
            self._terminate(proc)
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()

    def is_running(self) -> bool:
        """True when the pid file names a live, non-zombie process with the recorded start time."""
        return self._running_process() is not None

    def ensure_running(self, run: RunSpec) -> bool:
        """Start ``run`` unless the agent already runs; True when it had to be started."""
        if self.is_running():
            return False
        self._start(run)
        return True

    # -- extras -----------------------------------------------------------------------

    def last_exit(self) -> ProcessExit | None:
        """How the agent last ended, when this manager saw it end; None while it runs."""
        self._running_process()  # reaps our child if it has exited
        return self._last_exit

    def pid(self) -> int | None:
        """The running agent's pid, or None."""
        proc = self._running_process()
        return proc.pid if proc is not None else None

    def adopt_running(self, run: RunSpec) -> int | None:
        """Take an agent already running ``run`` (started without this manager, e.g. by the
        field's old snippet) into the pid file, without touching it; its pid, or None.

        The agent is the process whose working directory is ``run.cwd`` and whose command
        line is ``run.argv`` (any interpreter where the argv says ``{python}``).
        """
        known = self.pid()
        if known is not None:
            return known
        found = _find_running(run)
        if found is None:
            return None
        launch = {"version": str(run.version), "argv": found.cmdline(), "cwd": str(run.cwd),
                  "launch_id": None}  # fmt: skip
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._write_pid_file(found.pid, found.create_time(), launch)
        return found.pid

    # -- internals --------------------------------------------------------------------

    def _argv(self, run: RunSpec) -> list[str]:
        if not run.argv:
            raise ServiceError(
                "the process service manager needs the release's 'command' "
                "(e.g. ['{python}', 'nats_agent.py']); the manifest has none for this platform"
            )
        return [
            self.python if a == "{python}" else a.replace("{python}", self.python) for a in run.argv
        ]

    def _start(self, run: RunSpec) -> None:
        argv = self._argv(run)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._rotate_log()
        launch_id = uuid.uuid4().hex
        env = {**os.environ, **run.env, LAUNCH_ID_ENV: launch_id}
        launch = {
            "launch_id": launch_id,
            "version": str(run.version),
            "argv": argv,
            "cwd": str(run.cwd),
            "runtime_pid": os.getpid(),
            "runtime_create_time": _own_create_time(),
        }
        atomic_write_bytes(self.launch_file, (json.dumps(launch, indent=2) + "\n").encode())
        try:
            with open(self.log_file, "ab") as log:
                child = self._spawn(argv, run.cwd, env, log)
        except OSError as e:
            self._drop_launch()
            raise ServiceError(
                f"cannot start the agent `{' '.join(argv)}` in {run.cwd}: {e}"
            ) from e
        self._child = child
        self._last_exit = None
        faults.hit("process.spawned")
        try:
            create_time = psutil.Process(child.pid).create_time()
        except psutil.Error:
            create_time = 0.0  # already gone; is_running will say so
        self._write_pid_file(child.pid, create_time, launch)
        self._drop_launch()

    def _write_pid_file(self, pid: int, create_time: float, launch: dict[str, Any]) -> None:
        record = {
            "pid": pid,
            "create_time": create_time,
            "version": launch.get("version"),
            "argv": launch.get("argv"),
            "cwd": launch.get("cwd"),
            "launch_id": launch.get("launch_id"),
            "started": datetime.now(UTC).isoformat(),
        }
        atomic_write_bytes(self.pid_file, (json.dumps(record, indent=2) + "\n").encode())

    def _drop_launch(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.launch_file.unlink()

    def _resolve_launch(self) -> None:
        """Settle a launch record left by a runtime that died while starting the agent: adopt
        the process it started into the pid file (or stop it, when the pid file already tracks
        another live agent), then drop the record."""
        try:
            launch = json.loads(self.launch_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError):
            launch = None  # torn or unreadable: written before any spawn (atomic rename)
        if not isinstance(launch, dict) or not isinstance(launch.get("launch_id"), str):
            self._drop_launch()
            return
        record = self._read_pid_file()
        if record is not None and record.get("launch_id") == launch["launch_id"]:
            self._drop_launch()  # died after writing the pid file: nothing to settle
            return
        orphan = _find_launched(launch)
        if orphan is not None:
            tracked = self._tracked_process(record) if record is not None else None
            if tracked is not None and tracked.pid != orphan.pid:
                self._terminate(orphan)  # one agent only: keep the one the pid file names
            else:
                with contextlib.suppress(psutil.NoSuchProcess):  # exited meanwhile: no adoption
                    self._write_pid_file(orphan.pid, orphan.create_time(), launch)
        self._drop_launch()

    @staticmethod
    def _spawn(
        argv: list[str], cwd: Path, env: dict[str, str], log: IO[bytes]
    ) -> subprocess.Popen[bytes]:
        if sys.platform == "win32":
            flags = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.DETACHED_PROCESS
            return subprocess.Popen(
                argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, creationflags=flags,
            )  # fmt: skip
        return subprocess.Popen(
            argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
        )  # fmt: skip

    def _rotate_log(self) -> None:
        try:
            if self.log_file.stat().st_size > LOG_ROTATE_BYTES:
                os.replace(self.log_file, self.log_file.with_name(self.log_file.name + ".1"))
        except FileNotFoundError:
            pass

    def _read_pid_file(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.pid_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # missing or unreadable: no agent we know of
        if not isinstance(data, dict) or not isinstance(data.get("pid"), int):
            return None
        return data

    def _running_process(self) -> psutil.Process | None:
        if self.launch_file.exists():
            self._resolve_launch()
        record = self._read_pid_file()
        if record is None:
            return None
        return self._tracked_process(record)

    def _tracked_process(self, record: dict[str, Any]) -> psutil.Process | None:
        """The live process ``record`` names (same pid and creation time), or None."""
        pid: int = record["pid"]
        if self._child is not None and self._child.pid == pid:
            code = self._child.poll()  # reaps our own exited child
            if code is not None:
                self._last_exit = ProcessExit(pid, code)
                return None
        try:
            proc = psutil.Process(pid)
            same = abs(proc.create_time() - float(record.get("create_time", 0))) < (
                CREATE_TIME_TOLERANCE
            )
            if not same or proc.status() == psutil.STATUS_ZOMBIE:
                self._note_gone(pid)
                return None
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            self._note_gone(pid)
            return None
        except psutil.AccessDenied:
            return None  # another user's process: a recycled pid, not the agent we started
        return proc

    def _note_gone(self, pid: int) -> None:
        if self._last_exit is None or self._last_exit.pid != pid:
            self._last_exit = ProcessExit(pid, None)

    def _wait(self, proc: psutil.Process, timeout: float) -> int | None:
        """Wait for ``proc`` to exit and return its exit code if it was our child."""
        if self._child is not None and self._child.pid == proc.pid:
            try:
                return self._child.wait(timeout)
            except subprocess.TimeoutExpired as e:
                raise psutil.TimeoutExpired(timeout, proc.pid) from e
        deadline = time.monotonic() + timeout
        while True:
            try:
                return proc.wait(timeout=0)  # reaps it when it is our child after all
            except psutil.TimeoutExpired:
                pass
            try:
                if proc.status() == psutil.STATUS_ZOMBIE:
                    return None  # exited; its parent (maybe a non-reaping init) owns the code
            except psutil.NoSuchProcess:
                return None
            if time.monotonic() >= deadline:
                raise psutil.TimeoutExpired(timeout, proc.pid)
            time.sleep(_WAIT_POLL)

    def _terminate(self, proc: psutil.Process) -> None:
        try:
            proc.terminate()
            try:
                code = self._wait(proc, self.stop_timeout)
            except psutil.TimeoutExpired:
                proc.kill()
                code = self._wait(proc, KILL_WAIT)
        except psutil.NoSuchProcess:
            code = None
        except psutil.TimeoutExpired as e:
            raise ServiceError(f"agent pid {proc.pid} survived SIGKILL for {KILL_WAIT:g}s") from e
        except psutil.AccessDenied as e:
            raise ServiceError(f"not allowed to stop agent pid {proc.pid}: {e}") from e
        self._last_exit = ProcessExit(proc.pid, code)


def _own_create_time() -> float:
    try:
        return psutil.Process().create_time()
    except psutil.Error:
        return 0.0


def _find_launched(launch: dict[str, Any]) -> psutil.Process | None:
    """The live process started by ``launch``: the one carrying its launch id in its
    environment; when an environment cannot be read, one with the recorded argv and cwd
    that was created after the launching runtime."""
    want = launch["launch_id"]
    argv = launch.get("argv")
    cwd = launch.get("cwd")
    after = float(launch.get("runtime_create_time") or 0.0)
    me = os.getpid()
    for proc in psutil.process_iter():
        if proc.pid == me:
            continue
        try:
            if proc.create_time() + CREATE_TIME_TOLERANCE < after:
                continue  # older than the runtime that launched it
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            try:
                if proc.environ().get(LAUNCH_ID_ENV) == want:
                    return proc
                continue
            except psutil.AccessDenied:
                pass
            if argv and proc.cmdline() == argv and proc.cwd() == cwd:
                return proc
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
    return None


def _find_running(run: RunSpec) -> psutil.Process | None:
    """The live process running ``run.argv`` in ``run.cwd`` (first found), or None."""
    want = run.argv
    if not want:
        return None
    any_python = want[0] == "{python}"
    cwd = str(Path(run.cwd).resolve())
    me = os.getpid()
    for proc in psutil.process_iter():
        if proc.pid == me:
            continue
        try:
            cmdline = proc.cmdline()
            if any_python:
                same = cmdline[1:] == want[1:] and "python" in Path(cmdline[0]).name.lower()
            else:
                same = cmdline == want
            if same and proc.cwd() == cwd and proc.status() != psutil.STATUS_ZOMBIE:
                return proc
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied, IndexError):
            continue
    return None
