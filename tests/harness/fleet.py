"""A server and many devices under one base directory, and installing a first release fast."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

from tests.harness.device import DeviceTimings, RuntimeDevice
from tests.harness.procs import child_env, wait_until
from tests.harness.repo import DeviceSpec, OperatorRepo
from tests.harness.server import ServerProcess

__all__ = ["Fleet", "preinstall_devices"]


class Fleet:
    """A server and many devices under one base directory.

    Layout under ``base``: ``fleet/`` (the operator repo), ``devices/<id>/`` (agent/,
    state/, device.yaml, token, runtime.log) and ``server.log``.
    """

    def __init__(
        self,
        base: Path,
        specs: Sequence[DeviceSpec],
        groups: dict[str, Any],
        *,
        layout: Callable[[int], str] = lambda _i: "in_place",
        timings: DeviceTimings | None = None,
        poll_interval: str = "1s",
        server_env: dict[str, str] | None = None,
        state: str | None = None,
        engine_settings: dict[str, Any] | None = None,
        out: Callable[[str], None] = lambda _line: None,
        server_args: Sequence[str] = (),
    ) -> None:
        self.base = base
        self.engine_settings = engine_settings
        self.out = out
        self.repo = OperatorRepo(base / "fleet")
        self.specs = list(specs)
        self.groups = groups
        self.poll_interval = poll_interval
        self.server = ServerProcess(
            self.repo, base / "server.log", env=server_env, state=state, args=server_args
        )
        timings = timings or DeviceTimings()
        self.devices = {
            s.id: RuntimeDevice(s, base / "devices" / s.id, layout(i), timings)
            for i, s in enumerate(specs)
        }

    def device(self, device_id: str) -> RuntimeDevice:
        """One device by id."""
        return self.devices[device_id]

    def setup(self, preinstall: str = "3.0.0", parallel: int = 8) -> None:
        """Create the repo, start the server, write configs and preinstall every device."""
        self.repo.create(
            self.specs,
            self.groups,
            poll_interval=self.poll_interval,
            settings=self.engine_settings,
            out=self.out,
        )
        self.server.start()
        self.out(f"engine serve is up at {self.server.url} (SQLite store, log {self.server.log})")
        key = self.repo.public_key()
        for d in self.devices.values():
            d.write_config(key, self.server.url, self.server.enrollment_secret)
        self.out(f"installing agent {preinstall} on {len(self.devices)} devices …")
        preinstall_devices(list(self.devices.values()), self.repo, preinstall, parallel=parallel)

    def start(self, ids: Iterable[str] | None = None) -> None:
        """Start the runtimes of ``ids`` (default: all)."""
        for i in ids if ids is not None else self.devices:
            self.devices[i].start()

    def wait_reported(
        self, version: str, timeout: float = 90, ids: Iterable[str] | None = None
    ) -> None:
        """Wait until the server has a report of ``version`` from each of ``ids`` (default all)."""
        want = set(ids if ids is not None else self.devices)

        def reported() -> set[str]:
            try:
                resp = self.server.admin("GET", "/v1/admin/devices")
            except requests.RequestException:
                return set()
            if resp.status_code != 200:
                return set()
            return {
                str(d.get("device") or d.get("id"))
                for d in _device_rows(resp.json())
                if d.get("agent_version") == version
            }

        wait_until(
            f"{len(want)} devices to report {version}",
            lambda: want <= reported(),
            timeout=timeout,
            interval=0.5,
            progress=lambda: f"{len(want & reported())} of {len(want)} reported",
            out=self.out,
        )

    def versions(self) -> dict[str, str | None]:
        """Device id → installed version, from each runtime's state."""
        return {i: d.installed() for i, d in self.devices.items()}

    def stop(self) -> None:
        """Stop every runtime, agent and the server (idempotent; for cleanup)."""
        for d in self.devices.values():
            with contextlib.suppress(Exception):
                d.stop(timeout=5)
        for d in self.devices.values():
            with contextlib.suppress(Exception):
                d.stop_agent()
        with contextlib.suppress(Exception):
            self.server.stop()


def _device_rows(data: Any) -> list[dict[str, Any]]:
    """The device list of an admin answer, whether bare or wrapped in ``{"devices": [...]}``."""
    if isinstance(data, dict):
        data = data.get("devices", [])
    return [d for d in data if isinstance(d, dict)] if isinstance(data, list) else []


def preinstall_devices(
    devices: Sequence[RuntimeDevice],
    repo: OperatorRepo,
    version: str,
    *,
    parallel: int = 8,
    timeout: float = 300,
) -> None:
    """Install ``version`` on each device from the repo's local files, as a plan file would
    (the real runtime's converge, run for all devices in one helper process); the agents run
    afterwards. RuntimeError with the output when any device fails."""
    if not devices:
        return
    plan = {
        "generated_at": datetime.now(UTC).isoformat(),
        "inventory": {"root": str(repo.root), "digest": "preinstall"},
        "state": {"url": "preinstall", "reports": 0, "reports_digest": "preinstall"},
        "summary": {},
        "devices": [{"device": d.id, "group": None, "platform": d.spec.platform,
                     "current": None, "desired": version, "action": "install"}
                    for d in devices],
        "releases": {version: repo.release_ref(version)},
    }  # fmt: skip
    path = devices[0].base.parent / f"preinstall-{version}-{os.getpid()}-{time.time_ns()}.json"
    path.write_text(json.dumps(plan))
    proc = subprocess.run(
        [sys.executable, "-m", "tests.harness._preinstall", str(path), str(parallel),
         *(str(d.config_path) for d in devices)],
        env=child_env(), capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    path.unlink(missing_ok=True)
    if proc.returncode != 0:
        raise RuntimeError(f"preinstall of {version} failed:\n{proc.stdout}{proc.stderr}")
