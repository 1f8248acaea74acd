"""The runtime's supervisor: runs the current runtime, tries a new one, restores the old.

Standard library only, and nothing of this project: the service manager runs
a copy of this file with the system's Python (``python3 supervisor.py --home
DIR -- converge --config FILE``), so that no runtime release can break it.

Under ``--home`` (the runtime home):

- ``versions/<version>/``: one venv per runtime version (``bin/agent-runtime``);
- ``runtime.json``: ``{"current": V, "trial": null}``; while a new runtime is
  tried, ``trial`` is ``{"id", "version", "previous", "started"}``;
- ``confirmed.json``: ``{"trial": id}``, written by the new runtime after its
  first successful check-in;
- ``outcome.json``: the last update's outcome (``target``, ``result``:
  confirmed | reverted | failed, ``detail``, ``at``), reported by the runtime
  at check-in;
- ``child.pid``: the runtime the supervisor started.

A runtime learns its supervisor's pid from ``AGENT_RUNTIME_SUPERVISOR`` and
does nothing until ``child.pid`` names it (``wait_recorded``): a supervisor
killed between starting a runtime and recording it would leave a runtime its
successor cannot find and stop, and two runtimes would run at once; such a
runtime sees its supervisor gone and exits instead.

The old runtime installs the new one beside itself, writes a trial that is not
started yet and exits. The supervisor then marks the trial started, runs the
new runtime, and waits for ``confirmed.json``: once it names the trial, the new
runtime is current; when the runtime exits first, or the confirm timeout
passes, the outcome ``reverted`` is written, the previous version becomes
current again and is started. A trial found started when the supervisor
starts (it was killed mid-trial) is reverted unless confirmed: an unconfirmed
runtime is never trusted. Every state file is written atomically (temporary
file, fsync, rename), so a kill at any instant leaves a runnable version.
The agent is not the supervisor's business: it keeps running throughout.

Portable: on Windows (run by the service wrapper ``winsupervisor.py``) the
runtime is started in a process group of its own and asked to stop with
CTRL_BREAK (terminated when that cannot be delivered), a stale runtime is
recognised by its executable's path instead of ``/proc``, and a rename that
meets a reader holding the file open is retried. ``Supervisor.stop`` ends the
loop from a signal handler or another thread.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

__all__ = [
    "CHILD_PID",
    "CONFIRMED",
    "HOME_ENV",
    "OUTCOME",
    "STATE",
    "SUPERVISOR_ENV",
    "SWITCH_EXIT",
    "VERSIONS",
    "Supervisor",
    "build",
    "installing_marker",
    "main",
    "may_run",
    "parse_args",
    "read_json",
    "runtime_exe",
    "wait_recorded",
    "write_json",
]

STATE = "runtime.json"
CONFIRMED = "confirmed.json"
OUTCOME = "outcome.json"
CHILD_PID = "child.pid"
VERSIONS = "versions"
#: The environment variable naming the runtime home for the runtime it starts.
HOME_ENV = "AGENT_RUNTIME_HOME"
#: The environment variable naming the supervisor's pid for the runtime it starts.
SUPERVISOR_ENV = "AGENT_RUNTIME_SUPERVISOR"
#: Seconds a runtime waits to be recorded in ``child.pid`` while its supervisor lives
#: (it records within milliseconds; past this the runtime goes on regardless).
RECORD_TIMEOUT = 30.0
#: The exit code with which a runtime asks to be replaced by the trial it prepared.
SWITCH_EXIT = 75
#: Seconds between polls of a trial, and before restarting a runtime that exited.
POLL = 0.2
RESTART_DELAY = 1.0
#: Seconds a runtime gets to stop after SIGTERM before it is killed.
STOP_TIMEOUT = 10.0
#: Seconds a rename may keep meeting a reader that holds the file open (Windows only).
REPLACE_TIMEOUT = 5.0


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when it is missing or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` atomically: temporary file, fsync, rename, fsync the dir."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    _replace(tmp, path)
    if os.name != "nt":
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _replace(src: Path, dst: Path) -> None:
    """``os.replace``; on Windows retried while another process holds ``dst`` open (a
    sharing violation there, where POSIX renames over an open file)."""
    if sys.platform != "win32":
        os.replace(src, dst)
        return
    deadline = time.monotonic() + REPLACE_TIMEOUT
    while True:
        try:
            os.replace(src, dst)
            return
        except PermissionError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.02)


def runtime_exe(home: Path, version: str) -> Path:
    """The `agent-runtime` executable of ``version``'s venv."""
    if os.name == "nt":
        return home / VERSIONS / version / "Scripts" / "agent-runtime.exe"
    return home / VERSIONS / version / "bin" / "agent-runtime"


def installing_marker(version: str) -> str:
    """The name of the file beside ``versions/<version>`` while that venv is being built."""
    return f".{version}.installing"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Supervisor:
    """One supervisor over one runtime home (see the module docstring)."""

    def __init__(
        self,
        home: Path,
        args: list[str],
        confirm_timeout: float,
        out: Any = print,
        output: IO[Any] | None = None,
    ) -> None:
        """``output``: where the runtime's stdout and stderr go (None: the supervisor's)."""
        self.home = home
        self.args = args
        self.confirm_timeout = confirm_timeout
        self.out = out
        self.output = output
        self.child: subprocess.Popen[bytes] | None = None
        self.stopping = False

    def stop(self) -> None:
        """End the loop (from a signal handler or another thread): ``run`` stops the runtime
        and returns."""
        self.stopping = True

    # -- state ----------------------------------------------------------------------------

    def runnable(self, version: str) -> bool:
        """Whether ``version`` has a complete venv to run."""
        return (
            runtime_exe(self.home, version).exists()
            and not (self.home / VERSIONS / installing_marker(version)).exists()
        )

    def state(self) -> dict[str, Any]:
        """``runtime.json``; a missing or unreadable one, or one whose current version has no
        runtime, falls back to the newest runnable version."""
        state = read_json(self.home / STATE)
        current = None if state is None else state.get("current")
        usable = isinstance(current, str) and (
            bool(state and state.get("trial")) or self.runnable(str(current))
        )
        if state is not None and usable:
            return state
        versions = sorted(
            p.name for p in (self.home / VERSIONS).iterdir() if not p.name.startswith(".")
        )
        runnable = [v for v in versions if self.runnable(v)]
        if not runnable:
            raise SystemExit(f"supervisor: no runtime under {self.home / VERSIONS}")
        runnable.sort(key=_version_key)
        state = {"current": runnable[-1], "trial": None}
        why = f"{current} has no runtime" if isinstance(current, str) else f"{STATE} unreadable"
        self.out(f"supervisor: {why}: running {runnable[-1]}")
        write_json(self.home / STATE, state)
        return state

    def confirmed(self, trial: dict[str, Any]) -> bool:
        """Whether the trial's runtime confirmed itself (``confirmed.json`` names it)."""
        found = read_json(self.home / CONFIRMED)
        return found is not None and found.get("trial") == trial.get("id")

    def commit(self, state: dict[str, Any]) -> None:
        """The trial's runtime is current for good; versions other than it and the previous
        one are removed."""
        trial = state["trial"]
        write_json(
            self.home / OUTCOME,
            {"target": trial["version"], "result": "confirmed", "at": _now(),
             "detail": f"runtime {trial['version']} checked in; {trial['previous']} kept"},
        )  # fmt: skip
        write_json(self.home / STATE, {"current": trial["version"], "trial": None,
                                       "previous": trial["previous"]})  # fmt: skip
        self.out(f"supervisor: runtime {trial['version']} confirmed")
        keep = {trial["version"], trial["previous"]}
        for entry in (self.home / VERSIONS).iterdir():
            if entry.name in keep or entry.name.startswith("."):
                continue
            if entry.is_symlink():
                entry.unlink()
            else:
                shutil.rmtree(entry, ignore_errors=True)

    def revert(self, state: dict[str, Any], why: str) -> None:
        """Back to the trial's previous runtime, leaving the outcome for it to report."""
        trial = state["trial"]
        write_json(
            self.home / OUTCOME,
            {"target": trial["version"], "result": "reverted", "detail": why, "at": _now()},
        )
        write_json(self.home / STATE, {"current": trial["previous"], "trial": None})
        self.out(f"supervisor: runtime {trial['version']} reverted to {trial['previous']}: {why}")

    # -- the child ------------------------------------------------------------------------

    def start(self, version: str) -> subprocess.Popen[bytes]:
        """Start ``version``'s runtime with the supervisor's arguments."""
        env = dict(os.environ)
        env[HOME_ENV] = str(self.home)
        env[SUPERVISOR_ENV] = str(os.getpid())
        exe = runtime_exe(self.home, version)
        extra: dict[str, Any] = {}
        if self.output is not None:
            extra.update(stdin=subprocess.DEVNULL, stdout=self.output, stderr=subprocess.STDOUT)
        if sys.platform == "win32":  # its own group, so CTRL_BREAK reaches it alone
            extra["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
        self.child = subprocess.Popen([str(exe), *self.args], env=env, **extra)
        write_json(self.home / CHILD_PID, {"pid": self.child.pid, "version": version})
        self.out(f"supervisor: started runtime {version} (pid {self.child.pid})")
        return self.child

    def stop_child(self) -> None:
        """SIGTERM the runtime (Windows: CTRL_BREAK to its group), kill it after
        STOP_TIMEOUT (only it: never the agent)."""
        child = self.child
        if child is None or child.poll() is not None:
            return
        if sys.platform == "win32":
            try:
                child.send_signal(signal.CTRL_BREAK_EVENT)
            except OSError:  # no console shared with it: nothing to deliver the event
                child.terminate()
        else:
            child.terminate()
        try:
            child.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()

    def stop_stale(self) -> None:
        """Stop a runtime a killed supervisor left running (``child.pid``), so that two
        runtimes never run at once."""
        found = read_json(self.home / CHILD_PID)
        pid = found.get("pid") if found else None
        if not isinstance(pid, int) or pid <= 0 or pid == os.getpid():
            return
        if sys.platform == "win32":
            image = _win_image(pid)
            if image is None or not image.lower().startswith(str(self.home).lower()):
                return  # gone, or the pid was reused by something else
        else:
            cmdline = Path(f"/proc/{pid}/cmdline")
            if cmdline.parent.exists():
                try:
                    text = cmdline.read_bytes()
                except OSError:
                    return  # gone
                if str(self.home).encode() not in text:
                    return  # the pid was reused by something else
        try:
            os.kill(pid, signal.SIGTERM)  # Windows: TerminateProcess
        except (ProcessLookupError, PermissionError, OSError):
            return
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(POLL)
        with contextlib.suppress(OSError):
            os.kill(pid, getattr(signal, "SIGKILL", signal.SIGTERM))

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> int:
        """Supervise until SIGTERM/SIGINT; the exit code."""
        self.stop_stale()
        for tmp in self.home.glob(".*.tmp-*"):  # of writes a kill interrupted
            tmp.unlink(missing_ok=True)
        while not self.stopping:
            state = self.state()
            trial = state.get("trial")
            if trial:
                if self.confirmed(trial):
                    self.commit(state)
                    continue
                if trial.get("started"):
                    self.revert(state, "the supervisor restarted before the runtime confirmed")
                    continue
                kept = self.try_trial(state)
                if kept is None:
                    continue
                child = kept  # confirmed: it runs on as the current runtime
            else:
                child = self.start(state["current"])
            code = self.wait(child)
            if self.stopping:
                break
            if code != SWITCH_EXIT:
                self.out(f"supervisor: runtime exited with {code}; restarting")
                self.sleep(RESTART_DELAY)
        self.stop_child()
        return 0

    def try_trial(self, state: dict[str, Any]) -> subprocess.Popen[bytes] | None:
        """Run the trial's runtime until it confirms, exits or runs out of time; the runtime
        when it confirmed and still runs (None: reverted, or it already exited)."""
        if not self.runnable(str(state["trial"].get("version"))):
            self.revert(state, f"runtime {state['trial'].get('version')} is not installed")
            return None
        trial = dict(state["trial"], started=True)
        state = {"current": trial["version"], "trial": trial}
        write_json(self.home / STATE, state)
        child = self.start(trial["version"])
        deadline = time.monotonic() + self.confirm_timeout
        while not self.stopping:
            if self.confirmed(trial):
                self.commit(state)
                return child
            code = child.poll()
            if code is not None:
                if self.confirmed(trial):
                    self.commit(state)
                else:
                    self.revert(state, f"runtime {trial['version']} exited with {code} "
                                       "before it checked in")  # fmt: skip
                return None
            if time.monotonic() >= deadline:
                self.stop_child()
                self.revert(state, f"runtime {trial['version']} did not check in within "
                                   f"{self.confirm_timeout:g}s")  # fmt: skip
                return None
            self.sleep(POLL)
        return None  # stopped mid-trial: the next supervisor reverts it (started, unconfirmed)

    def wait(self, child: subprocess.Popen[bytes]) -> int:
        """Wait for the runtime to exit (or the supervisor to be stopped)."""
        while not self.stopping:
            code = child.poll()
            if code is not None:
                return code
            self.sleep(POLL)
        return 0

    def sleep(self, seconds: float) -> None:
        """Sleep, ending early when stopped."""
        end = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < end:
            time.sleep(min(POLL, max(0.0, end - time.monotonic())))


def wait_recorded(home: Path, supervisor: int, timeout: float = RECORD_TIMEOUT) -> bool:
    """Wait until ``home``'s ``child.pid`` names this process; False when the supervisor
    ``supervisor`` died first (the runtime must then exit without doing anything)."""
    me = os.getpid()
    deadline = time.monotonic() + timeout
    while True:
        found = read_json(home / CHILD_PID)
        if found is not None and found.get("pid") == me:
            return True
        if not _supervisor_alive(supervisor):
            return False
        if time.monotonic() >= deadline:
            return True
        time.sleep(0.02)


def may_run() -> bool:
    """False when a supervisor started this process and died before recording it in
    ``child.pid`` (the process must exit at once); True otherwise, or with no supervisor.
    Called by a runtime before it does anything."""
    pid = os.environ.pop(SUPERVISOR_ENV, "")  # for this process, not its children
    home = os.environ.get(HOME_ENV)
    if not home or not pid.isdigit():
        return True
    return wait_recorded(Path(home), int(pid))


def _supervisor_alive(pid: int) -> bool:
    """Whether the supervisor ``pid`` that started this process still runs."""
    if sys.platform == "win32":
        return _win_alive(pid)
    # A child whose parent died is re-parented at once: no pid-reuse question.
    return os.getppid() == pid


def _version_key(version: str) -> tuple[tuple[int, str], ...]:
    """Sorts 0.10.0 after 0.9.0 (numbers as numbers, anything else as text)."""
    return tuple((int(p), "") if p.isdigit() else (-1, p) for p in version.split("."))


def _alive(pid: int) -> bool:
    if sys.platform == "win32":
        return _win_alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(ChildProcessError, OSError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


# -- Windows: a process by its pid, through kernel32 (ctypes is in the standard library) ----

_SYNCHRONIZE = 0x00100000
_PROCESS_QUERY_LIMITED_INFORMATION = 0x1000
_WAIT_TIMEOUT = 0x102


def _win_open(pid: int) -> tuple[Any, Any]:  # pragma: no cover - Windows only
    """kernel32 and a handle on ``pid`` (None when there is no such process or no access:
    a process LocalSystem cannot query is not one it started)."""
    import ctypes

    kernel32: Any = ctypes.WinDLL("kernel32")  # type: ignore[attr-defined,unused-ignore]
    kernel32.OpenProcess.restype = ctypes.c_void_p
    kernel32.WaitForSingleObject.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    kernel32.CloseHandle.argtypes = [ctypes.c_void_p]
    query = kernel32.QueryFullProcessImageNameW
    query.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_wchar_p, ctypes.c_void_p]
    access = _SYNCHRONIZE | _PROCESS_QUERY_LIMITED_INFORMATION
    return kernel32, kernel32.OpenProcess(access, False, pid)


def _win_alive(pid: int) -> bool:  # pragma: no cover - Windows only
    """Whether ``pid`` runs."""
    kernel32, handle = _win_open(pid)
    if not handle:
        return False
    try:
        return bool(kernel32.WaitForSingleObject(handle, 0) == _WAIT_TIMEOUT)
    finally:
        kernel32.CloseHandle(handle)


def _win_image(pid: int) -> str | None:  # pragma: no cover - Windows only
    """The full path of ``pid``'s executable, or None when it cannot be read."""
    import ctypes

    kernel32, handle = _win_open(pid)
    if not handle:
        return None
    try:
        size = ctypes.c_uint32(32768)
        buf = ctypes.create_unicode_buffer(size.value)
        if not kernel32.QueryFullProcessImageNameW(handle, 0, buf, ctypes.byref(size)):
            return None
        return buf.value
    finally:
        kernel32.CloseHandle(handle)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """``--home DIR [--confirm-timeout S] -- ARGS...``; bad arguments exit 2 with the usage."""
    parser = argparse.ArgumentParser(prog="agent-runtime-supervisor")
    parser.add_argument("--home", type=Path, required=True, help="the runtime home")
    parser.add_argument("--confirm-timeout", type=float, default=120.0, metavar="SECONDS")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="-- the runtime's arguments")
    ns = parser.parse_args(argv)
    ns.args = ns.args[1:] if ns.args[:1] == ["--"] else ns.args
    if not ns.args:
        parser.error("the runtime's arguments are missing (-- converge --config FILE)")
    if not ns.confirm_timeout > 0:
        parser.error("--confirm-timeout must be a positive number of seconds")
    ns.home = ns.home.absolute()
    return ns


def build(ns: argparse.Namespace, out: Any = None, output: IO[Any] | None = None) -> Supervisor:
    """The supervisor ``parse_args`` describes; ``out`` prints its lines (default: stdout)."""
    if out is None:
        out = lambda line: print(line, flush=True)  # noqa: E731
    return Supervisor(ns.home, ns.args, ns.confirm_timeout, out=out, output=output)


def main(argv: list[str] | None = None) -> int:
    """``supervisor.py --home DIR [--confirm-timeout S] -- ARGS...``: the exit code."""
    sup = build(parse_args(argv))

    def stop(_signum: int, _frame: object) -> None:
        sup.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return sup.run()


if __name__ == "__main__":
    sys.exit(main())
