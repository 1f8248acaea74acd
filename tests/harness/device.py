"""One device on disk: agent root, state, device config, and its `agent-runtime` process."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from agent_runtime.services.process import ProcessManager
from tests.harness.procs import child_env, kill_processes_under
from tests.harness.repo import DeviceSpec

__all__ = [
    "DeviceTimings",
    "RuntimeDevice",
    "active_dir",
    "read_heartbeat",
    "stop_agent",
    "transactions_in",
]


def active_dir(root: Path, layout: str) -> Path:
    """The directory the active release's files are in, for an agent root in ``layout``."""
    if layout == "in_place":
        return root
    pointer = root / "current.txt"
    if pointer.exists():
        return root / "releases" / pointer.read_text().strip()
    return (root / "current").resolve()


def read_heartbeat(directory: Path) -> dict[str, Any] | None:
    """The example agent's heartbeat file in ``directory``, if readable."""
    try:
        data: dict[str, Any] = json.loads((directory / "heartbeat.json").read_text())
    except (OSError, ValueError):
        return None
    return data


def stop_agent(state_dir: Path, base: Path) -> None:
    """Stop the agent the process manager of ``state_dir`` started, and anything else still
    running from ``base`` (test and fleet cleanup)."""
    with contextlib.suppress(Exception):
        ProcessManager(state_dir, stop_timeout=3.0).stop()
    kill_processes_under(base)


@dataclass(frozen=True)
class DeviceTimings:
    """Compressed timings of a device (seconds, or duration strings the config accepts)."""

    interval: str = "1s"
    jitter: str = "0.2s"
    heartbeat: str = "0.3"  # the agent's HEARTBEAT_INTERVAL
    forward: str = "0.5s"  # server.heartbeat_interval
    backoff_base: str = "0.2s"
    backoff_cap: str = "2s"
    health_timeout: str = "10s"


@dataclass
class RuntimeDevice:
    """One device: a temp dir with an agent root, a device config, and its runtime process."""

    spec: DeviceSpec
    base: Path
    layout: str = "in_place"
    timings: DeviceTimings = field(default_factory=DeviceTimings)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def id(self) -> str:
        """The device id."""
        return self.spec.id

    @property
    def config_path(self) -> Path:
        """The device config file."""
        return self.base / "device.yaml"

    @property
    def state_dir(self) -> Path:
        """The runtime's state directory."""
        return self.base / "state"

    @property
    def agent_root(self) -> Path:
        """The agent root."""
        return self.base / "agent"

    @property
    def log(self) -> Path:
        """The runtime's output."""
        return self.base / "runtime.log"

    def write_config(self, key: str, server_url: str, secret: str, **extra: Any) -> None:
        """The device config: pinned key, pull mode against ``server_url``, short timings."""
        t = self.timings
        cfg: dict[str, Any] = {
            "device": self.id,
            "platform": self.spec.platform,
            "agent_root": "agent",
            "layout": self.layout,
            "state_dir": "state",
            "service": {"manager": "process", "stop_timeout": "3s"},
            "trusted_keys": [key],
            "health_timeout": t.health_timeout,
            "max_attempts": 2,
            "download": {"connect_timeout": "3s", "stall_timeout": "5s", "retries": 1},
            "env": {"HEARTBEAT_INTERVAL": t.heartbeat, "PYTHONDONTWRITEBYTECODE": "1"},
            "converge": {"interval": t.interval, "jitter": t.jitter},
            "server": {
                "url": server_url,
                "token_file": "token",
                "enrollment_secret": secret,
                "timeout": "5s",
                "heartbeat_interval": t.forward,
                "backoff_base": t.backoff_base,
                "backoff_cap": t.backoff_cap,
            },
        }
        cfg.update(extra)
        self.base.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))

    def start(self, python: Path | None = None) -> None:
        """Start `agent-runtime converge` (pull mode) for this device; with ``python``, the
        runtime installed in that interpreter's environment (nothing of this checkout)."""
        env, cwd = child_env(), None
        if python is not None:  # neither PYTHONPATH nor `-m`'s working directory: this checkout
            env.pop("PYTHONPATH", None)
            cwd = self.base
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                [str(python or sys.executable), "-m", "agent_runtime.cli", "converge",
                 "--config", str(self.config_path)],
                env=env, cwd=cwd, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def running(self) -> bool:
        """True while the runtime process runs."""
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15) -> None:
        """Stop the runtime (SIGTERM, then SIGKILL); the agent keeps running."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def stop_agent(self) -> None:
        """Stop the agent and anything else still running from this device's directory."""
        stop_agent(self.state_dir, self.base)

    # -- observation --------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """The runtime's state file ({} before the first run)."""
        try:
            data: dict[str, Any] = json.loads((self.state_dir / "state.json").read_text())
        except (OSError, ValueError):
            return {}
        return data

    def installed(self) -> str | None:
        """The installed version the runtime records."""
        value = self.state().get("installed")
        return str(value) if value is not None else None

    def agent_pid(self) -> int | None:
        """The pid of the running agent (from the process manager's pid file), if it runs."""
        return ProcessManager(self.state_dir).pid()

    def heartbeat(self) -> dict[str, Any] | None:
        """The agent's heartbeat file (in the active directory), if readable."""
        return read_heartbeat(active_dir(self.agent_root, self.layout))

    def heartbeating(self, version: str, max_age: float = 5.0) -> bool:
        """True when the running agent's fresh heartbeat names ``version``."""
        beat = self.heartbeat()
        if beat is None or beat.get("version") != version:
            return False
        try:
            age = (datetime.now(UTC) - datetime.fromisoformat(str(beat["time"]))).total_seconds()
        except (KeyError, ValueError):
            return False
        return age <= max_age and beat.get("pid") == self.agent_pid()

    def runs(self, version: str) -> bool:
        """True when the runtime records ``version`` as installed and its agent heartbeats it
        (the agent's heartbeat comes first: the runtime commits after confirming it)."""
        return self.installed() == version and self.heartbeating(version)

    def log_text(self) -> str:
        """The runtime's output so far."""
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def transactions(self) -> list[tuple[str, str]]:
        """(target, result) of every transaction this device's runtimes ran, from their logs."""
        return transactions_in(self.log_text())


def transactions_in(log: str) -> list[tuple[str, str]]:
    """(target, result) of every transaction in a runtime's output."""
    out: list[tuple[str, str]] = []
    target: str | None = None
    for line in log.splitlines():
        if line.startswith("transaction ") and " -> " in line:
            target = line.split(" -> ", 1)[1].split()[0]
        elif line.startswith("result: ") and target is not None:
            out.append((target, line.removeprefix("result: ").split()[0]))
            target = None
    return out
