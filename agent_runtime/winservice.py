"""Windows service wrapper: ``pythonw -m agent_runtime.winservice --config FILE``.

A program registered with ``sc.exe create`` must call
``StartServiceCtrlDispatcherW`` and report SERVICE_RUNNING within 30 seconds,
or the Service Control Manager kills it (error 1053). This module does that
with ctypes (no pywin32): it reports RUNNING, runs ``agent-runtime converge``
(pull mode) in a thread, and on SERVICE_CONTROL_STOP / SHUTDOWN sets the loop's
stop event and reports STOPPED once the loop has ended. It runs on Windows
only; elsewhere it says so and exits 2. The command lines that register it
are generated and tested in ``runtime_service``.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

__all__ = ["main"]

_SERVICE_WIN32_OWN_PROCESS = 0x10
_SERVICE_STOPPED, _SERVICE_START_PENDING, _SERVICE_STOP_PENDING, _SERVICE_RUNNING = 1, 2, 3, 4
_SERVICE_CONTROL_STOP, _SERVICE_CONTROL_SHUTDOWN = 1, 5
_SERVICE_ACCEPT_STOP, _SERVICE_ACCEPT_SHUTDOWN = 1, 4


def main(argv: list[str] | None = None) -> int:
    """Run as the AgentRuntime service; the exit code."""
    args = sys.argv[1:] if argv is None else argv
    if sys.platform != "win32":
        print("agent_runtime.winservice runs under the Windows SCM only", file=sys.stderr)
        return 2
    if len(args) != 2 or args[0] != "--config":
        print("usage: pythonw -m agent_runtime.winservice --config FILE", file=sys.stderr)
        return 2
    return _serve(args[1])


def _serve(config_path: str) -> int:  # pragma: no cover - needs the Windows SCM
    import ctypes
    from ctypes import wintypes

    from agent_runtime.config import load_config
    from agent_runtime.pull import run_pull

    advapi: Any = ctypes.WinDLL("advapi32", use_last_error=True)  # type: ignore[attr-defined]

    class Status(ctypes.Structure):
        _fields_ = [(n, wintypes.DWORD) for n in (
            "dwServiceType", "dwCurrentState", "dwControlsAccepted", "dwWin32ExitCode",
            "dwServiceSpecificExitCode", "dwCheckPoint", "dwWaitHint")]  # fmt: skip

    handler_type = ctypes.WINFUNCTYPE(None, wintypes.DWORD)  # type: ignore[attr-defined]
    main_type = ctypes.WINFUNCTYPE(  # type: ignore[attr-defined]
        None, wintypes.DWORD, ctypes.POINTER(wintypes.LPWSTR)
    )
    stop = threading.Event()
    handle: list[Any] = [None]
    code = [0]

    def report(state: int) -> None:
        accepted = 0 if state == _SERVICE_START_PENDING else (
            _SERVICE_ACCEPT_STOP | _SERVICE_ACCEPT_SHUTDOWN)  # fmt: skip
        status = Status(_SERVICE_WIN32_OWN_PROCESS, state, accepted, 0, 0, 0, 30000)
        advapi.SetServiceStatus(handle[0], ctypes.byref(status))

    def on_control(control: int) -> None:
        if control in (_SERVICE_CONTROL_STOP, _SERVICE_CONTROL_SHUTDOWN):
            report(_SERVICE_STOP_PENDING)
            stop.set()

    control_handler = handler_type(on_control)

    def service_main(argc: int, argv: Any) -> None:
        handle[0] = advapi.RegisterServiceCtrlHandlerW("AgentRuntime", control_handler)
        report(_SERVICE_START_PENDING)
        config = load_config(__import__("pathlib").Path(config_path))
        report(_SERVICE_RUNNING)
        code[0] = run_pull(config, stop=stop)
        report(_SERVICE_STOPPED)

    class Entry(ctypes.Structure):
        _fields_ = [("name", wintypes.LPWSTR), ("proc", main_type)]

    table = (Entry * 2)(Entry("AgentRuntime", main_type(service_main)), Entry(None, main_type()))
    if not advapi.StartServiceCtrlDispatcherW(table):
        err = ctypes.get_last_error()  # type: ignore[attr-defined]
        print(f"not started by the SCM (error {err})", file=sys.stderr)
        return 1
    return code[0]


if __name__ == "__main__":
    sys.exit(main())
