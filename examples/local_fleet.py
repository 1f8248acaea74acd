"""A real fleet on one machine: operator repo, `engine serve`, and device runtimes in temp dirs.

The building blocks of the quickstart demo (``examples/demo.py``), the
end-to-end tests (``tests/e2e``) and the fleet benchmark: every part is the
real thing — the ``engine`` CLI, ``engine serve`` on 127.0.0.1, one
``agent-runtime converge`` process per device in pull mode, and the example
agent running under it.

Layout under a base directory::

    fleet/                 the operator repo (inventory, signed releases, artifacts, .engine/)
    devices/<id>/          agent/, state/, device.yaml, token, runtime.log
    server.log
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import requests
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_FLEET = REPO_ROOT / "examples" / "fleet"
RELEASES = ("3.0.0", "3.0.1", "3.0.2", "3.0.3")
PLATFORMS = ("linux", "windows", "macos")

__all__ = [
    "DeviceSpec",
    "DeviceTimings",
    "Fleet",
    "OperatorRepo",
    "RuntimeDevice",
    "ServerProcess",
    "free_port",
    "wait_until",
]


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


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.pop("AGENT_RUNTIME_FAULT", None)
    env.update(extra or {})
    return env


# -- the operator repo -------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceSpec:
    """One device of a generated inventory."""

    id: str
    platform: str = "linux"
    tags: tuple[str, ...] = ()
    site: str = "demo"
    pin: str | None = None

    def yaml(self) -> dict[str, Any]:
        """The device's inventory entry."""
        entry: dict[str, Any] = {"platform": self.platform, "site": self.site}
        if self.tags:
            entry["tags"] = list(self.tags)
        if self.pin is not None:
            entry["pin"] = self.pin
        return entry


def demo_devices(count: int, canaries: int) -> list[DeviceSpec]:
    """``canaries`` internal machines and the rest point-of-sale and servers, mixed platforms."""
    out = [DeviceSpec(f"it-{i + 1:02d}", PLATFORMS[i % 3], ("internal",)) for i in range(canaries)]
    kinds = (("pos", "windows"), ("pos", "windows"), ("mac", "macos"), ("srv", "linux"))
    for i in range(count - canaries):
        kind, platform = kinds[i % len(kinds)]
        out.append(DeviceSpec(f"store-{kind}-{i + 1:02d}", platform, (kind,)))
    return out


class OperatorRepo:
    """A fresh operator repo with the example releases, signed with a new key."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.key = root / "keys" / "release-signing.key"
        self.pub = root / "keys" / "release-signing.pub"
        self.inventory = root / "inventory" / "fleet.yaml"

    def create(
        self,
        devices: Sequence[DeviceSpec],
        groups: dict[str, Any],
        *,
        poll_interval: str = "1s",
        out: Callable[[str], None] = lambda _line: None,
    ) -> None:
        """Copy the example releases and artifacts, write the inventory, keygen, and sign."""
        (self.root / "inventory").mkdir(parents=True, exist_ok=True)
        (self.root / "releases").mkdir(exist_ok=True)
        for v in RELEASES:
            shutil.copy2(EXAMPLE_FLEET / "releases" / f"{v}.yaml", self.root / "releases")
            shutil.copytree(EXAMPLE_FLEET / "artifacts" / v, self.root / "artifacts" / v)
        settings = {"poll_interval": poll_interval, "stale_after": "1d"}
        (self.root / "engine.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
        self.write_inventory(devices, groups)
        # the engine's own commands, run in this process: four process starts saved
        from engine.cli import main as engine_main

        with contextlib.redirect_stdout(io.StringIO()):
            codes = [engine_main(["keygen", "--out", str(self.key.parent)])]
            for v in RELEASES:
                manifest = str(self.root / "releases" / f"{v}.yaml")
                codes.append(engine_main(["release", "sign", manifest, "--key", str(self.key)]))
        if any(codes):
            raise RuntimeError(f"engine keygen / release sign failed in {self.root}: {codes}")
        out(f"signed releases {', '.join(RELEASES)} with a new key ({self.pub.name})")

    def write_inventory(self, devices: Sequence[DeviceSpec], groups: dict[str, Any]) -> None:
        """(Re)write the inventory file."""
        doc = {"devices": {d.id: d.yaml() for d in devices}, "groups": groups}
        self.inventory.write_text(yaml.safe_dump(doc, sort_keys=False))

    def set_release(self, version: str, groups: Iterable[str] | None = None) -> None:
        """Point ``groups`` (default: every group with an agent) at ``version``."""
        doc = yaml.safe_load(self.inventory.read_text())
        for name, group in doc["groups"].items():
            if "agent" in group and (groups is None or name in groups):
                group["agent"]["release"] = version
        self.inventory.write_text(yaml.safe_dump(doc, sort_keys=False))

    def public_key(self) -> str:
        """The line devices pin."""
        return self.pub.read_text().strip()

    def engine(
        self,
        *args: str,
        check: bool = True,
        timeout: float = 300,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``engine ARGS`` in the repo; CalledProcessError when ``check`` and it fails."""
        proc = subprocess.run(
            [sys.executable, "-m", "engine", *args],
            cwd=self.root,
            env=_env(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise subprocess.CalledProcessError(
                proc.returncode, ["engine", *args], proc.stdout, proc.stderr
            )
        return proc

    def release_ref(self, version: str) -> dict[str, Any]:
        """A plan's release entry for ``version`` pointing at the repo's local files."""
        manifest = self.root / "releases" / f"{version}.yaml"
        doc = yaml.safe_load(manifest.read_text())
        return {
            "version": version,
            "serial": doc["serial"],
            "manifest": str(manifest),
            "signature": str(manifest) + ".sig",
            "manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest(),
            "artifacts": str(self.root / "artifacts"),
        }


# -- engine serve --------------------------------------------------------------------------------


class ServerProcess:
    """`engine serve` on 127.0.0.1 as a child process; can be killed and started again."""

    def __init__(
        self,
        repo: OperatorRepo,
        log: Path,
        *,
        port: int | None = None,
        state: str | None = None,
        env: dict[str, str] | None = None,
        args: Sequence[str] = (),
    ) -> None:
        self.repo = repo
        self.log = log
        self.port = port or free_port()
        self.state = state
        self.admin_token = secrets.token_urlsafe(24)
        self.enrollment_secret = secrets.token_urlsafe(24)
        self.env = {
            "ENGINE_ADMIN_TOKEN": self.admin_token,
            "ENGINE_ENROLLMENT_SECRET": self.enrollment_secret,
            **(env or {}),
        }
        if state is not None:
            self.env["ENGINE_STATE_URL"] = state
        self.args = list(args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        """Base URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> None:
        """Start the server and wait until it answers HTTP."""
        cmd = [sys.executable, "-m", "engine", "serve", "-C", str(self.repo.root),
               "--host", "127.0.0.1", "--port", str(self.port), *self.args]  # fmt: skip
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as logf:
            logf.write(f"\n== start {self.starts + 1}: {' '.join(cmd)}\n".encode())
            logf.flush()
            self.proc = subprocess.Popen(
                cmd, cwd=self.repo.root, env=_env(self.env), stdout=logf, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.starts += 1
        proc = self.proc

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"engine serve exited with {proc.returncode}; see {self.log}:\n{self.tail()}"
                )
            try:
                requests.get(self.url + "/openapi.json", timeout=1)
            except requests.RequestException:
                return False
            return True

        wait_until("engine serve to answer", up, timeout=timeout, interval=0.1)

    def tail(self, lines: int = 30) -> str:
        """The end of the server's log."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL the server (a crash: no shutdown of any kind)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 10) -> None:
        """Stop the server gracefully (SIGTERM, then SIGKILL)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def admin(self, method: str, path: str, **kw: Any) -> requests.Response:
        """An operator API request with the admin token."""
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        return requests.request(method, self.url + path, headers=headers, timeout=10, **kw)


# -- device runtimes -----------------------------------------------------------------------------


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

    def start(self) -> None:
        """Start `agent-runtime converge` (pull mode) for this device."""
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent_runtime.cli", "converge",
                 "--config", str(self.config_path)],
                env=_env(), stdout=logf, stderr=subprocess.STDOUT, start_new_session=True,
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
        pid = self.agent_pid()
        if pid is not None:
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()
        base = str(self.base.resolve())
        for proc in psutil.process_iter(["cwd"]):
            cwd = proc.info.get("cwd") or ""
            if cwd.startswith(base) and proc.pid != os.getpid():
                with contextlib.suppress(psutil.Error):
                    proc.kill()

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
        try:
            data = json.loads((self.state_dir / "agent.pid").read_text())
        except (OSError, ValueError):
            return None
        pid = data.get("pid") if isinstance(data, dict) else None
        if not isinstance(pid, int):
            return None
        try:
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
        except psutil.Error:
            return None
        return pid

    def heartbeat(self) -> dict[str, Any] | None:
        """The agent's heartbeat file (in the active directory), if readable."""
        active = self.agent_root
        if self.layout == "versioned":
            current = self.agent_root / "current"
            pointer = self.agent_root / "current.txt"
            if pointer.exists():
                active = self.agent_root / "releases" / pointer.read_text().strip()
            elif current.exists():
                active = current.resolve()
        try:
            data: dict[str, Any] = json.loads((active / "heartbeat.json").read_text())
        except (OSError, ValueError):
            return None
        return data

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

    def log_text(self) -> str:
        """The runtime's output so far."""
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def transactions(self) -> list[tuple[str, str]]:
        """(target, result) of every transaction this device's runtimes ran, from their logs."""
        out: list[tuple[str, str]] = []
        target: str | None = None
        for line in self.log_text().splitlines():
            if line.startswith("transaction ") and " -> " in line:
                target = line.split(" -> ", 1)[1].split()[0]
            elif line.startswith("result: ") and target is not None:
                out.append((target, line.removeprefix("result: ").split()[0]))
                target = None
        return out


class Fleet:
    """A server and many devices under one base directory."""

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
        out: Callable[[str], None] = lambda _line: None,
    ) -> None:
        self.base = base
        self.out = out
        self.repo = OperatorRepo(base / "fleet")
        self.specs = list(specs)
        self.groups = groups
        self.poll_interval = poll_interval
        self.server = ServerProcess(self.repo, base / "server.log", env=server_env, state=state)
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
        self.repo.create(self.specs, self.groups, poll_interval=self.poll_interval, out=self.out)
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
        [sys.executable, str(Path(__file__).resolve()), "_preinstall", str(path), str(parallel),
         *(str(d.config_path) for d in devices)],
        env=_env(), capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    path.unlink(missing_ok=True)
    if proc.returncode != 0:
        raise RuntimeError(f"preinstall of {version} failed:\n{proc.stdout}{proc.stderr}")


def _preinstall_main(plan: str, parallel: int, configs: list[str]) -> int:
    """In a helper process: converge each device config to the plan file once."""
    from agent_runtime.config import load_config
    from agent_runtime.converge import FilePlanSource, Runtime

    def one(config_path: str) -> tuple[str, str]:
        config = load_config(Path(config_path))
        runtime = Runtime(config, out=lambda _line: None)
        res = runtime.converge_once(FilePlanSource(Path(plan), config.device))
        return config.device, f"{res.result} {res.detail}"

    with ThreadPoolExecutor(parallel) as pool:
        results = list(pool.map(one, configs))
    failed = [f"{d}: {r}" for d, r in results if not r.startswith("committed")]
    for line in failed:
        print(line)
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "_preinstall":
        sys.path.insert(0, str(REPO_ROOT))
        sys.exit(_preinstall_main(sys.argv[2], int(sys.argv[3]), sys.argv[4:]))
    sys.exit("usage: local_fleet.py _preinstall PLAN PARALLEL CONFIG...")
