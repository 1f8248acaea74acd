"""Child processes and polling: free ports, the environment of a child, waiting, cleanup."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil

__all__ = [
    "REPO_ROOT",
    "child_env",
    "free_port",
    "kill_processes_under",
    "start_as_service",
    "wait_until",
]

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    what: str,
    check: Callable[[], bool],
    *,
    timeout: float,
    interval: float = 0.25,
    progress: Callable[[], str] | None = None,
    out: Callable[[str], None] | None = None,
    every: float = 5.0,
) -> None:
    """Poll ``check`` until it is true; TimeoutError naming ``what`` (and the last progress)."""
    deadline = time.monotonic() + timeout
    next_note = time.monotonic() + every
    while True:
        if check():
            return
        now = time.monotonic()
        if now >= deadline:
            last = f" ({progress()})" if progress is not None else ""
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{last}")
        if out is not None and progress is not None and now >= next_note:
            out(f"  … {progress()}")
            next_note = now + every
        time.sleep(interval)


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of an `engine` / `agent-runtime` child: this checkout importable,
    127.0.0.1 never proxied, no fault injected unless ``extra`` names one."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.pop("AGENT_RUNTIME_FAULT", None)
    env.update(extra or {})
    return env


def kill_processes_under(base: Path) -> None:
    """SIGKILL every process (but this one) whose working directory is inside ``base``:
    agents a test or a fleet started there."""
    root = str(base.resolve())
    for proc in psutil.process_iter(["cwd"]):
        cwd = proc.info.get("cwd") or ""
        if cwd.startswith(root) and proc.pid != os.getpid():
            with contextlib.suppress(psutil.Error):
                proc.kill()


def start_as_service(argv: list[str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    """Start ``argv`` as a service manager would: its own session, output to ``log``, no
    PYTHONPATH (each runtime version runs its own venv's code)."""
    env = child_env()
    env.pop("PYTHONPATH", None)
    with open(log, "ab") as out:
        return subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
