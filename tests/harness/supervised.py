"""A device whose runtime runs under the supervisor, from a runtime home with versioned venvs.

The home (``<device>/runtime-home``) is laid out as an install would leave it:
``versions/<version>`` (here a link to a venv shared by the devices of a test
session: a runtime never changes its own venv), ``runtime.json`` naming it
current, and a copy of ``agent_runtime/supervisor.py`` run with this
interpreter. The runtime's children get no ``PYTHONPATH``: each venv runs its
own installed code, as on a device.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.harness.device import RuntimeDevice
from tests.harness.procs import REPO_ROOT, child_env

__all__ = ["SupervisedRuntime"]

SUPERVISOR_SOURCE = REPO_ROOT / "agent_runtime" / "supervisor.py"


class SupervisedRuntime:
    """The supervisor and runtime home of one device (its agent is the device's as usual)."""

    def __init__(self, device: RuntimeDevice, confirm_timeout: float = 30.0) -> None:
        self.device = device
        self.home = device.base / "runtime-home"
        self.confirm_timeout = confirm_timeout
        self.proc: subprocess.Popen[bytes] | None = None

    def prepare(self, version: str, venv: Path) -> None:
        """A home whose only (and current) runtime is ``version``, the venv at ``venv``."""
        versions = self.home / "versions"
        versions.mkdir(parents=True, exist_ok=True)
        (versions / version).symlink_to(venv, target_is_directory=True)
        shutil.copy2(SUPERVISOR_SOURCE, self.home / "supervisor.py")
        (self.home / "runtime.json").write_text(json.dumps({"current": version, "trial": None}))

    def start(self) -> None:
        """Start the supervisor (which starts the current runtime in pull mode)."""
        env = child_env()
        env.pop("PYTHONPATH", None)
        cmd = [sys.executable, str(self.home / "supervisor.py"), "--home", str(self.home),
               "--confirm-timeout", str(self.confirm_timeout), "--",
               "converge", "--config", str(self.device.config_path)]  # fmt: skip
        with open(self.device.log, "ab") as logf:
            self.proc = subprocess.Popen(
                cmd, env=env, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True,
                cwd=self.home,
            )  # fmt: skip

    def kill_supervisor(self) -> None:
        """SIGKILL the supervisor alone (its runtime lives on, orphaned)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        """Stop the supervisor and its runtime (SIGTERM to the group, then SIGKILL)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        runtime = self.child_pid()
        if runtime is not None:
            with contextlib.suppress(OSError):
                os.kill(runtime, signal.SIGKILL)

    def _json(self, name: str) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads((self.home / name).read_text())
        except (OSError, ValueError):
            return {}
        return data

    def state(self) -> dict[str, Any]:
        """``runtime.json`` ({} when unreadable)."""
        return self._json("runtime.json")

    def current(self) -> str | None:
        """The current runtime version."""
        value = self.state().get("current")
        return str(value) if value is not None else None

    def outcome(self) -> dict[str, Any]:
        """``outcome.json``: the last runtime update's outcome ({} when none)."""
        return self._json("outcome.json")

    def child_pid(self) -> int | None:
        """The runtime the supervisor started last (``child.pid``)."""
        pid = self._json("child.pid").get("pid")
        return int(pid) if isinstance(pid, int) else None
