"""The supervised Windows service: the SCM runs the supervisor with the base Python.

``pythonw.exe HOME\\winsupervisor.py --home HOME [--confirm-timeout S] -- converge
--config FILE``. Standard library only, and nothing of this project: the
installer copies this file into the runtime home beside ``supervisor.py``, as
it copies ``supervisor.py`` itself, and the service runs the copy with the
interpreter that built the runtime's venvs, so that no runtime release can
break it (docs/runtime.md, "Runtime self-update"). It loads the
``supervisor.py`` beside it (in the package, the package's own).

A program registered with ``sc.exe create`` must call
``StartServiceCtrlDispatcherW`` and report SERVICE_RUNNING within 30 seconds,
or the Service Control Manager kills it (error 1053). ``run_service`` does
that with ctypes (no pywin32); the in-venv wrapper ``agent_runtime.winservice``
uses it too. Here the service's work is the supervisor loop: SERVICE_CONTROL_STOP
and SHUTDOWN call ``Supervisor.stop``, the loop stops its runtime (CTRL_BREAK,
killed after the supervisor's stop timeout) and the service reports STOPPED;
a supervisor that ends with an error reports it (exit code), so that the SCM's
failure actions restart it. The supervisor and its runtimes log to
``HOME\\supervisor.log`` (kept below 10 MB: the previous one is
``supervisor.log.1``).

Elsewhere than Windows it checks its arguments, says that it runs under the SCM
only and exits 2.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Protocol

__all__ = ["LOG", "SupervisedService", "main", "run_service"]

#: The log the supervisor and its runtimes write to, in the runtime home.
LOG = "supervisor.log"
#: Beyond this size the log is moved to ``supervisor.log.1`` when the service starts.
LOG_ROTATE_BYTES = 10 * 1024 * 1024
USAGE = (
    "usage: pythonw.exe HOME\\winsupervisor.py --home HOME [--confirm-timeout SECONDS] "
    "-- converge --config FILE"
)

_SERVICE_WIN32_OWN_PROCESS = 0x10
_SERVICE_STOPPED, _SERVICE_START_PENDING, _SERVICE_STOP_PENDING, _SERVICE_RUNNING = 1, 2, 3, 4
_SERVICE_CONTROL_STOP, _SERVICE_CONTROL_SHUTDOWN = 1, 5
_SERVICE_ACCEPT_STOP, _SERVICE_ACCEPT_SHUTDOWN = 1, 4
_ERROR_SERVICE_SPECIFIC_ERROR = 1066
#: What the SCM is told to wait for a stop (the runtime gets the supervisor's stop timeout).
_WAIT_HINT_MS = 30000


class ServiceBody(Protocol):
    """What a service runs: ``run`` until ``stop`` is called (from the SCM's thread)."""

    def run(self) -> int: ...

    def stop(self) -> None: ...


def load_supervisor() -> Any:
    """The ``supervisor.py`` beside this file, as a module of its own."""
    path = Path(__file__).with_name("supervisor.py")
    spec = importlib.util.spec_from_file_location("agent_runtime_supervisor", path)
    if spec is None or spec.loader is None or not path.is_file():
        raise FileNotFoundError(f"no supervisor.py beside {Path(__file__).name} in {path.parent}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class SupervisedService:
    """The supervisor over one runtime home, logging to ``HOME\\supervisor.log``."""

    def __init__(self, argv: list[str]) -> None:
        """``argv`` as the supervisor takes them; bad ones exit 2 (SystemExit) with the
        usage."""
        sv = load_supervisor()
        ns = sv.parse_args(argv)
        if not ns.home.is_dir():
            raise SystemExit(f"winsupervisor: the runtime home {ns.home} is not a directory")
        self.home: Path = ns.home
        self.log: IO[str] = _open_log(ns.home / LOG)
        self.supervisor = sv.build(ns, out=self._line, output=self.log)

    def _line(self, line: str) -> None:
        self.log.write(line + "\n")
        self.log.flush()

    def run(self) -> int:
        """Supervise until ``stop``; the exit code (the log holds the error of a failure)."""
        try:
            return int(self.supervisor.run())
        except SystemExit as e:  # the supervisor's own "cannot run" (no runtime installed)
            self._line(str(e.code))
            return 1
        except Exception:  # a bug: logged, and the service stops with an error (restarted)
            self._line(traceback.format_exc().rstrip())
            return 1
        finally:
            self.log.flush()

    def stop(self) -> None:
        """The stop hook: the loop stops its runtime and ``run`` returns."""
        self.supervisor.stop()

    def close(self) -> None:
        """Close the log."""
        self.log.close()


def _open_log(path: Path) -> IO[str]:
    """``path`` for appending, line-buffered, after moving a too large one to ``.1`` (kept
    when it cannot be moved: on Windows a runtime a killed supervisor left may hold it)."""
    try:
        if path.stat().st_size > LOG_ROTATE_BYTES:
            os.replace(path, path.with_name(path.name + ".1"))
    except OSError:
        pass
    return open(path, "a", encoding="utf-8", buffering=1)


def main(argv: list[str] | None = None) -> int:
    """Run as the AgentRuntime service; the exit code (2: bad arguments, or not Windows)."""
    args = sys.argv[1:] if argv is None else argv
    try:
        load_supervisor().parse_args(args)
    except FileNotFoundError as e:
        print(f"winsupervisor: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # argparse printed the error and its usage
        return e.code if isinstance(e.code, int) else 2
    if sys.platform != "win32":
        print("winsupervisor runs under the Windows SCM only", file=sys.stderr)
        return 2
    return run_service("AgentRuntime", lambda: _as_service(SupervisedService(args)))


def _as_service(service: SupervisedService) -> SupervisedService:  # pragma: no cover
    """Send this process's stray output (pythonw has none) to the service's log, and give
    it a console of its own (hidden: session 0), shared by the runtimes it starts, so that
    the supervisor can send them CTRL_BREAK; the process itself ignores console events
    (the SCM stops it)."""
    sys.stdout = sys.stderr = service.log
    if sys.platform == "win32":
        import ctypes

        kernel32: Any = ctypes.WinDLL("kernel32")
        if kernel32.AllocConsole():
            ignore = ctypes.WINFUNCTYPE(ctypes.c_int, ctypes.c_uint32)(lambda _event: 1)
            _KEEP.append(ignore)
            kernel32.SetConsoleCtrlHandler(ignore, 1)
    return service


_KEEP: list[Any] = []  # ctypes callbacks the system may call for as long as the process lives


def run_service(name: str, make: Callable[[], ServiceBody]) -> int:  # pragma: no cover
    """Run as the service ``name`` under the SCM: START_PENDING, ``make()`` the body,
    RUNNING, ``body.run()``, STOPPED with its exit code; SERVICE_CONTROL_STOP and SHUTDOWN
    call ``body.stop()``. 1 when not started by the SCM."""
    import ctypes
    from ctypes import wintypes

    advapi: Any = ctypes.WinDLL("advapi32", use_last_error=True)  # type: ignore[attr-defined,unused-ignore]

    class Status(ctypes.Structure):
        _fields_ = [(n, wintypes.DWORD) for n in (
            "dwServiceType", "dwCurrentState", "dwControlsAccepted", "dwWin32ExitCode",
            "dwServiceSpecificExitCode", "dwCheckPoint", "dwWaitHint")]  # fmt: skip

    handler_type = ctypes.WINFUNCTYPE(None, wintypes.DWORD)  # type: ignore[attr-defined,unused-ignore]
    main_type = ctypes.WINFUNCTYPE(  # type: ignore[attr-defined,unused-ignore]
        None, wintypes.DWORD, ctypes.POINTER(wintypes.LPWSTR)
    )
    handle: list[Any] = [None]
    body: list[ServiceBody | None] = [None]
    code = [0]
    lock = threading.Lock()

    def report(state: int, exit_code: int = 0) -> None:
        accepted = 0 if state in (_SERVICE_START_PENDING, _SERVICE_STOPPED) else (
            _SERVICE_ACCEPT_STOP | _SERVICE_ACCEPT_SHUTDOWN)  # fmt: skip
        win32 = _ERROR_SERVICE_SPECIFIC_ERROR if exit_code else 0
        status = Status(_SERVICE_WIN32_OWN_PROCESS, state, accepted, win32, exit_code, 0,
                        _WAIT_HINT_MS)  # fmt: skip
        with lock:
            advapi.SetServiceStatus(handle[0], ctypes.byref(status))

    def on_control(control: int) -> None:
        if control in (_SERVICE_CONTROL_STOP, _SERVICE_CONTROL_SHUTDOWN):
            report(_SERVICE_STOP_PENDING)
            running = body[0]
            if running is not None:
                running.stop()

    control_handler = handler_type(on_control)

    def service_main(argc: int, argv: Any) -> None:
        handle[0] = advapi.RegisterServiceCtrlHandlerW(name, control_handler)
        report(_SERVICE_START_PENDING)
        try:
            made = body[0] = make()
            report(_SERVICE_RUNNING)
            code[0] = made.run()
        except SystemExit as e:
            print(e.code, file=sys.stderr)
            code[0] = e.code if isinstance(e.code, int) and e.code else 1
        except Exception:
            traceback.print_exc()
            code[0] = 1
        report(_SERVICE_STOPPED, code[0])

    class Entry(ctypes.Structure):
        _fields_ = [("name", wintypes.LPWSTR), ("proc", main_type)]

    table = (Entry * 2)(Entry(name, main_type(service_main)), Entry(None, main_type()))
    if not advapi.StartServiceCtrlDispatcherW(table):
        err = ctypes.get_last_error()  # type: ignore[attr-defined,unused-ignore]
        print(f"not started by the SCM (error {err})", file=sys.stderr)
        return 1
    return code[0]


if __name__ == "__main__":
    sys.exit(main())
