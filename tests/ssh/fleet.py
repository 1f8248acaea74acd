"""Agentless "devices" for the SSH tests: directories on 127.0.0.1 reached through the test sshd."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.harness.repo import DeviceSpec, OperatorRepo
from tests.harness.server import ServerProcess
from tests.harness.sshd import Sshd

__all__ = ["SshFleet"]


class SshFleet:
    """An operator repo whose devices are directories on this host, reached over SSH."""

    def __init__(self, base: Path, sshd: Sshd, ids: list[str], policy: dict[str, Any]) -> None:
        self.base = base
        self.sshd = sshd
        self.ids = ids
        self.repo = OperatorRepo(base / "fleet")
        self.host = base / "host"  # what the devices' host holds
        self.runtime_dir = self.host / "runtime"
        self.known_hosts = sshd.known_hosts(base / "known_hosts")
        self.server = ServerProcess(self.repo, base / "server.log")
        specs = [DeviceSpec(i, "linux") for i in ids]
        group = {"match": {"site": "demo"}, "agent": {"release": "3.0.0"}, "rollout": policy,
                 "ssh": {"host": "127.0.0.1", "port": sshd.port, "user": sshd.user,
                         "key_file": str(sshd.client_key), "known_hosts": str(self.known_hosts),
                         "runtime_dir": str(self.runtime_dir), "service": "process",
                         "agent_root": str(self.host / "{device}" / "agent"),
                         "runtime_config": {
                             "service": {"stop_timeout": "3s"}, "health_timeout": "10s",
                             "max_attempts": 1,
                             "env": {"HEARTBEAT_INTERVAL": "0.3",
                                     "PYTHONDONTWRITEBYTECODE": "1"}}}}  # fmt: skip
        self.repo.create(specs, {"fleet": group})
        settings = yaml.safe_load((self.repo.root / "engine.yaml").read_text())
        settings["trusted_keys"] = ["keys/release-signing.pub"]
        settings["server_url"] = self.server.url
        (self.repo.root / "engine.yaml").write_text(yaml.safe_dump(settings))

    def install_runtime_link(self) -> None:
        """Make this test's own `agent-runtime` the host's runtime (as if installed before)."""
        venv_bin = self.runtime_dir / "venv" / "bin"
        venv_bin.mkdir(parents=True, exist_ok=True)
        (venv_bin / "agent-runtime").symlink_to(Path(sys.executable).with_name("agent-runtime"))

    def apply(self, *args: str, timeout: float = 240) -> Any:
        """`engine apply --yes --transport ssh ARGS` in the repo."""
        env = {"ENGINE_ENROLLMENT_SECRET": self.server.enrollment_secret}
        return self.repo.engine("apply", "--yes", "--transport", "ssh", *args, check=False,
                                timeout=timeout, env=env)  # fmt: skip

    def device_dir(self, device: str) -> Path:
        """The runtime's files of ``device`` on the host."""
        return self.runtime_dir / "devices" / device

    def state(self, device: str) -> dict[str, Any]:
        """The runtime's state file of ``device``."""
        path = self.device_dir(device) / "state" / "state.json"
        data: dict[str, Any] = json.loads(path.read_text())
        return data

    def stop(self) -> None:
        """Stop the agents the runtimes started, and the server."""
        for d in self.ids:
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                pid = json.loads((self.device_dir(d) / "state" / "agent.pid").read_text())["pid"]
                os.kill(int(pid), signal.SIGKILL)
        self.server.stop()
