"""The demo's fleet, built and driven with the product's commands only.

An operator repo (the example releases, an inventory, a signing key made by
`engine keygen` and signatures by `engine release sign`), `engine serve` on
127.0.0.1, and one directory per device with its own device config and
`agent-runtime converge` process in pull mode. The first release is
installed with `agent-runtime converge --once --plan` from a plan file this
module writes. Everything is observed through
`engine status --json`, the operator API (``/v1/admin/devices``, the same
rows `engine devices list --json` prints, and ``/v1/admin/rollouts/<name>``)
and the runtimes' own output.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import yaml

EXAMPLE_FLEET = Path(__file__).resolve().parent / "fleet"
RELEASES = ("3.0.0", "3.0.1", "3.0.2", "3.0.3", "3.0.4")
PLATFORMS = ("linux", "windows", "macos")

__all__ = ["DemoFleet", "Device", "demo_devices", "wait_until"]


def wait_until(
    what: str,
    check: Callable[[], bool],
    *,
    timeout: float,
    interval: float = 0.5,
    progress: Callable[[], str] | None = None,
    out: Callable[[str], None] | None = None,
) -> None:
    """Poll ``check`` until it is true; TimeoutError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    next_note = time.monotonic() + 5
    while not check():
        now = time.monotonic()
        if now >= deadline:
            last = f" ({progress()})" if progress is not None else ""
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{last}")
        if out is not None and progress is not None and now >= next_note:
            out(f"  … {progress()}")
            next_note = now + 5
        time.sleep(interval)


@dataclass(frozen=True)
class Device:
    """One device of the demo: its inventory entry and its directory."""

    id: str
    platform: str
    tag: str
    base: Path

    @property
    def config(self) -> Path:
        """The device config."""
        return self.base / "device.yaml"

    @property
    def log(self) -> Path:
        """The runtime's output."""
        return self.base / "runtime.log"

    def transactions(self) -> list[tuple[str, str]]:
        """(target, result) of each transaction in the runtime's output."""
        out: list[tuple[str, str]] = []
        target: str | None = None
        with contextlib.suppress(OSError):
            for line in self.log.read_text(errors="replace").splitlines():
                if line.startswith("transaction ") and " -> " in line:
                    target = line.split(" -> ", 1)[1].split()[0]
                elif line.startswith("result: ") and target is not None:
                    out.append((target, line.removeprefix("result: ").split()[0]))
                    target = None
        return out


def demo_devices(base: Path, count: int, canaries: int) -> list[Device]:
    """``canaries`` internal machines, the rest point-of-sale, Macs and servers."""
    out = [Device(f"it-{i + 1:02d}", PLATFORMS[i % 3], "internal", base / f"it-{i + 1:02d}")
           for i in range(canaries)]  # fmt: skip
    kinds = (("pos", "windows"), ("pos", "windows"), ("mac", "macos"), ("srv", "linux"))
    for i in range(count - canaries):
        kind, platform = kinds[i % len(kinds)]
        name = f"store-{kind}-{i + 1:02d}"
        out.append(Device(name, platform, kind, base / name))
    return out


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _command(name: str) -> list[str]:
    """`engine` / `agent-runtime` from this interpreter's environment."""
    return [str(Path(sys.executable).with_name(name))]


class DemoFleet:
    """The operator repo, the server and the devices under one base directory."""

    def __init__(self, base: Path, devices: list[Device], groups: dict[str, Any]) -> None:
        self.base = base
        self.repo = base / "fleet"
        self.devices = {d.id: d for d in devices}
        self.groups = groups
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_token = secrets.token_urlsafe(24)
        self.enrollment_secret = secrets.token_urlsafe(24)
        self.server_log = base / "server.log"
        self.server: subprocess.Popen[bytes] | None = None
        self.runtimes: list[subprocess.Popen[bytes]] = []

    # -- commands ------------------------------------------------------------------------

    def engine(self, *args: str, capture: bool = True) -> subprocess.CompletedProcess[str]:
        """`engine ARGS` in the operator repo; CalledProcessError when it fails to run."""
        proc = subprocess.run([*_command("engine"), *args], cwd=self.repo, env=_env(), text=True,
                              capture_output=capture, check=False, timeout=300)  # fmt: skip
        if capture and proc.returncode not in (0, 2):  # 2: apply --wait saw a rollout halt
            raise subprocess.CalledProcessError(proc.returncode, ["engine", *args],
                                                proc.stdout, proc.stderr)  # fmt: skip
        return proc

    def create_repo(self) -> None:
        """The example releases, the inventory, a new signing key, signed manifests."""
        (self.repo / "inventory").mkdir(parents=True)
        (self.repo / "releases").mkdir()
        for v in RELEASES:
            shutil.copy2(EXAMPLE_FLEET / "releases" / f"{v}.yaml", self.repo / "releases")
            shutil.copytree(EXAMPLE_FLEET / "artifacts" / v, self.repo / "artifacts" / v)
        settings = {"poll_interval": "1s", "stale_after": "1d"}
        (self.repo / "engine.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
        inventory = {
            "devices": {d.id: {"platform": d.platform, "site": "demo", "tags": [d.tag]}
                        for d in self.devices.values()},
            "groups": self.groups,
        }  # fmt: skip
        (self.repo / "inventory" / "fleet.yaml").write_text(yaml.safe_dump(inventory))
        self.engine("keygen", "--out", "keys")
        for v in RELEASES:
            self.engine(
                "release", "sign", f"releases/{v}.yaml", "--key", "keys/release-signing.key"
            )

    def set_release(self, version: str) -> None:
        """Point every group at ``version`` in the inventory."""
        path = self.repo / "inventory" / "fleet.yaml"
        doc = yaml.safe_load(path.read_text())
        for group in doc["groups"].values():
            group["agent"]["release"] = version
        path.write_text(yaml.safe_dump(doc))

    def set_rollout(self, group: str, **values: Any) -> None:
        """Change keys of one group's rollout policy in the inventory."""
        path = self.repo / "inventory" / "fleet.yaml"
        doc = yaml.safe_load(path.read_text())
        doc["groups"][group]["rollout"].update(values)
        path.write_text(yaml.safe_dump(doc))

    def start_server(self, timeout: float = 60) -> None:
        """`engine serve` on 127.0.0.1 (SQLite in the repo's .engine/); wait until it answers."""
        env = {**_env(), "ENGINE_ADMIN_TOKEN": self.admin_token,
               "ENGINE_ENROLLMENT_SECRET": self.enrollment_secret}  # fmt: skip
        with open(self.server_log, "ab") as log:
            self.server = subprocess.Popen(
                [*_command("engine"), "serve", "-C", str(self.repo), "--host", "127.0.0.1",
                 "--port", str(self.port)],
                cwd=self.repo, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        server = self.server

        def up() -> bool:
            if server.poll() is not None:
                raise RuntimeError(f"engine serve exited with {server.returncode}")
            try:
                urllib.request.urlopen(self.url + "/openapi.json", timeout=1).close()
            except OSError:
                return False
            return True

        wait_until("engine serve to answer", up, timeout=timeout, interval=0.1)

    def write_configs(self) -> None:
        """Each device's config: pull mode against the server, the pinned key, short timings."""
        key = (self.repo / "keys" / "release-signing.pub").read_text().strip()
        for d in self.devices.values():
            d.base.mkdir(parents=True, exist_ok=True)
            cfg = {
                "device": d.id, "platform": d.platform, "agent_root": "agent",
                "state_dir": "state", "trusted_keys": [key], "health_timeout": "10s",
                "max_attempts": 2,
                "service": {"manager": "process", "stop_timeout": "3s"},
                "env": {"HEARTBEAT_INTERVAL": "0.3", "PYTHONDONTWRITEBYTECODE": "1"},
                "converge": {"interval": "1s", "jitter": "0.2s"},
                "server": {"url": self.url, "token_file": "token",
                           "enrollment_secret": self.enrollment_secret,
                           "heartbeat_interval": "0.5s", "backoff_base": "0.2s",
                           "backoff_cap": "2s"},
            }  # fmt: skip
            d.config.write_text(yaml.safe_dump(cfg, sort_keys=False))

    def preinstall(self, version: str, parallel: int = 4) -> None:
        """Install ``version`` on every device: `agent-runtime converge --once --plan` with a
        plan file naming the repo's own copy of the release."""
        manifest = self.repo / "releases" / f"{version}.yaml"
        plan = {
            "generated_at": datetime.now(UTC).isoformat(),
            "inventory": {"root": str(self.repo), "digest": "demo"},
            "state": {"url": "demo", "reports": 0, "reports_digest": "demo"},
            "summary": {},
            "devices": [{"device": d.id, "group": None, "platform": d.platform, "current": None,
                         "desired": version, "action": "install"}
                        for d in self.devices.values()],
            "releases": {version: {
                "version": version, "serial": yaml.safe_load(manifest.read_text())["serial"],
                "manifest": str(manifest), "signature": f"{manifest}.sig",
                "manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest(),
                "artifacts": str(self.repo / "artifacts")}},
        }  # fmt: skip
        path = self.base / f"install-{version}.json"
        path.write_text(json.dumps(plan))

        def one(d: Device) -> str | None:
            proc = subprocess.run(
                [*_command("agent-runtime"), "converge", "--once", "--plan", str(path),
                 "--config", str(d.config)],
                env=_env(), capture_output=True, text=True, check=False, timeout=120,
            )  # fmt: skip
            return None if proc.returncode == 0 else f"{d.id}: {proc.stdout}{proc.stderr}"

        with ThreadPoolExecutor(parallel) as pool:
            failed = [f for f in pool.map(one, self.devices.values()) if f]
        if failed:
            raise RuntimeError("installing the first release failed:\n" + "\n".join(failed))

    def start_runtimes(self) -> None:
        """`agent-runtime converge` (pull mode) for every device, output to its runtime.log."""
        for d in self.devices.values():
            with open(d.log, "ab") as log:
                self.runtimes.append(subprocess.Popen(
                    [*_command("agent-runtime"), "converge", "--config", str(d.config)],
                    env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                ))  # fmt: skip

    # -- observation ---------------------------------------------------------------------

    def admin(self, path: str) -> Any:
        """A GET of the operator API (``/v1/admin/...``) with the admin token, as JSON."""
        request = urllib.request.Request(
            f"{self.url}/v1/admin/{path}", headers={"Authorization": f"Bearer {self.admin_token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            return json.loads(resp.read())

    def reports(self) -> dict[str, dict[str, Any]]:
        """The server's record of each device (what `engine devices list --json` prints)."""
        return {str(r["device"]): r for r in self.admin("devices")}

    def status(self) -> dict[str, Any]:
        """`engine status --json`."""
        data: dict[str, Any] = json.loads(self.engine("status", "--json").stdout)
        return data

    def rollout(self, name: str) -> dict[str, Any]:
        """One rollout with its devices, from the operator API."""
        request = urllib.request.Request(
            f"{self.url}/v1/admin/rollouts/{name}",
            headers={"Authorization": f"Bearer {self.admin_token}"},
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            data: dict[str, Any] = json.loads(resp.read())
        return data

    # -- cleanup -------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the runtimes, then their agents, then the server (idempotent)."""
        for proc in self.runtimes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.runtimes:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        root = str(self.base.resolve())
        for agent in psutil.process_iter(["cwd"]):  # the agents, started by the runtimes
            if (agent.info.get("cwd") or "").startswith(root) and agent.pid != os.getpid():
                with contextlib.suppress(psutil.Error):
                    agent.kill()
        if self.server is not None and self.server.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.server.pid, signal.SIGTERM)
            try:
                self.server.wait(10)
            except subprocess.TimeoutExpired:
                self.server.kill()

    def server_tail(self, lines: int = 30) -> str:
        """The end of the server's log."""
        with contextlib.suppress(OSError):
            return "\n".join(self.server_log.read_text(errors="replace").splitlines()[-lines:])
        return ""
