"""A device sandbox for runtime tests: a signed release repo, a device dir, a real agent.

``Sandbox`` publishes the example agent's releases (examples/build_releases.py)
signed with a test key, writes a device config and plan files, runs
``agent-runtime`` as a real subprocess, and checks the invariant of the kill
matrix: the agent root holds exactly one release, that release runs and
heartbeats, the journal is closed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from agent_runtime.config import load_config
from agent_runtime.converge import FilePlanSource, Runtime
from agent_runtime.services.process import ProcessManager
from engine.signing import generate_key, public_key_text, sign
from examples.build_releases import CATALOGUE, agent_files, manifest_document
from states.plan import DevicePlan, InventoryRef, Plan, ReleaseRef, StateRef
from tests.harness.device import active_dir, stop_agent
from tests.harness.procs import child_env

__all__ = ["DEVICE", "Published", "Sandbox"]

DEVICE = "test-device-01"
HEARTBEAT_INTERVAL = "0.2"


@dataclass
class Published:
    """What the sandbox published for one version."""

    version: str
    files: dict[str, bytes]
    doc: dict[str, Any]


@dataclass
class Sandbox:
    """One device with its own release repo, under ``base``."""

    base: Path
    layout: str = "in_place"
    pointer: str = "auto"
    rename_aside: bool | None = None
    max_attempts: int = 3
    stall_timeout: str = "1s"
    installed_version: str | None = None
    published: dict[str, Published] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.repo = self.base / "repo"
        self.root = self.base / "agent"
        self.state = self.base / "state"
        self.config_path = self.base / "device.yaml"
        self.plan_path = self.base / "plan.json"
        self.key = generate_key()
        self.pinned = [public_key_text(self.key.public_key())]
        self.repo.mkdir(parents=True, exist_ok=True)
        self.root.mkdir(parents=True, exist_ok=True)
        self.write_config()

    # -- config and releases --------------------------------------------------------------

    def write_config(self, **overrides: Any) -> None:
        """Write the device config (short timeouts for tests)."""
        cfg: dict[str, Any] = {
            "device": DEVICE,
            "platform": "linux",
            "agent_root": str(self.root),
            "layout": self.layout,
            "state_dir": str(self.state),
            "service": {"manager": "process", "stop_timeout": "3s"},
            "trusted_keys": self.pinned,
            "max_attempts": self.max_attempts,
            "health_timeout": "2s",
            "download": {"stall_timeout": self.stall_timeout, "retries": 0,
                         "connect_timeout": "2s"},
            "env": {"HEARTBEAT_INTERVAL": HEARTBEAT_INTERVAL, "PYTHONDONTWRITEBYTECODE": "1"},
            "pointer": self.pointer,
        }  # fmt: skip
        if self.rename_aside is not None:
            cfg["rename_aside"] = self.rename_aside
        if self.installed_version is not None:
            cfg["installed_version"] = self.installed_version
        cfg.update(overrides)
        self.config_path.write_text(yaml.safe_dump(cfg))

    def publish(
        self,
        version: str,
        *,
        serial: int | None = None,
        expires: datetime | None = None,
        extra_files: dict[str, bytes] | None = None,
        pad_mb: int = 0,
        mutate: Callable[[dict[str, Any]], None] | None = None,
        signer: Any = None,
        sign_it: bool = True,
    ) -> Published:
        """Write artifacts and a signed manifest for ``version`` (catalogue behaviour)."""
        release = CATALOGUE[version]
        files = agent_files(release, pad_mb)
        files.update(extra_files or {})
        when = (expires or datetime.now(UTC) + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
        doc = manifest_document(release, dict(sorted(files.items())), when)
        doc["platforms"] = {"linux": doc["platforms"]["linux"]}
        doc["health_check"]["timeout"] = "4s"
        doc["health_check"]["max_age"] = "3s"
        if serial is not None:
            doc["serial"] = serial
        if mutate is not None:
            mutate(doc)
        for rel, data in files.items():
            dest = self.repo / "artifacts" / version / "linux" / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
        text = yaml.safe_dump(doc, sort_keys=False).encode()
        manifest = self.repo / "releases" / f"{version}.yaml"
        manifest.parent.mkdir(parents=True, exist_ok=True)
        manifest.write_bytes(text)
        sig = manifest.with_name(manifest.name + ".sig")
        if sign_it:
            sig.write_bytes(sign(text, [signer or self.key]))
        elif sig.exists():
            sig.unlink()
        pub = Published(version, files, doc)
        self.published[version] = pub
        return pub

    def artifact(self, version: str, rel: str) -> Path:
        """The repo's artifact file of ``rel`` in ``version``."""
        return self.repo / "artifacts" / version / "linux" / rel

    def write_plan(
        self,
        desired: str | None,
        current: str | None = None,
        *,
        base_url: str | None = None,
        artifacts_url: str | None = None,
    ) -> Path:
        """A plan file whose entry for this device wants ``desired``."""
        releases: dict[str, ReleaseRef] = {}
        for v in self.published:
            manifest = self.repo / "releases" / f"{v}.yaml"
            loc = (lambda p: f"{base_url}/{p}") if base_url else (lambda p: p)
            releases[v] = ReleaseRef(
                version=v,  # type: ignore[arg-type]
                serial=int(self.published[v].doc["serial"]),
                manifest=loc(f"releases/{v}.yaml"),
                signature=loc(f"releases/{v}.yaml.sig"),
                manifest_sha256=hashlib.sha256(manifest.read_bytes()).hexdigest(),
                artifacts=artifacts_url or loc("artifacts"),
            )
        plan = Plan(
            generated_at=datetime.now(UTC),
            inventory=InventoryRef(root=str(self.repo), digest="test"),
            state=StateRef(url="test", reports=0, reports_digest="test"),
            summary={},
            devices=[
                DevicePlan(
                    device=DEVICE,
                    group="test",
                    platform="linux",  # type: ignore[arg-type]
                    current=current,  # type: ignore[arg-type]
                    desired=desired,  # type: ignore[arg-type]
                    action="update",  # type: ignore[arg-type]
                )
            ],
            releases=releases,
        )
        self.plan_path.write_text(plan.model_dump_json(indent=1))
        return self.plan_path

    # -- running the runtime ------------------------------------------------------------

    def runtime(self, out: Callable[[str], None] | None = None) -> Runtime:
        """An in-process runtime for this device (fast setup steps)."""
        return Runtime(load_config(self.config_path), out=out or (lambda _line: None))

    def converge_inproc(self, desired: str, current: str | None = None) -> str:
        """Converge in this process; the result's value."""
        self.write_plan(desired, current)
        rt = self.runtime()
        return rt.converge_once(FilePlanSource(self.plan_path, DEVICE)).result.value

    def cli(
        self,
        *args: str,
        fault: str | None = None,
        timeout: float = 60,
        preexec: Callable[[], None] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``agent-runtime ARGS --config <device.yaml>`` as a real subprocess."""
        return subprocess.run(
            [*self.cli_argv(*args)],
            env=self.cli_env(fault),
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=preexec,
            check=False,
        )

    def cli_argv(self, *args: str) -> list[str]:
        """argv of an ``agent-runtime`` subprocess for this device."""
        return [sys.executable, "-m", "agent_runtime.cli", *args, "--config", str(self.config_path)]

    def cli_env(self, fault: str | None = None) -> dict[str, str]:
        """Environment of an ``agent-runtime`` subprocess (with an optional fault)."""
        return child_env({"AGENT_RUNTIME_FAULT": fault} if fault else None)

    def converge(self, fault: str | None = None) -> subprocess.CompletedProcess[str]:
        """``agent-runtime converge --once --plan plan.json`` as a subprocess."""
        return self.cli("converge", "--once", "--plan", str(self.plan_path), fault=fault)

    # -- observation ----------------------------------------------------------------------

    def manager(self) -> ProcessManager:
        """A process manager reading the agent's pid file."""
        return ProcessManager(self.state)

    def agent_pid(self) -> int | None:
        """The pid of the running agent, if it runs."""
        return self.manager().pid()

    def stop_agent(self) -> None:
        """Stop the agent and any process still running inside the sandbox (test teardown)."""
        stop_agent(self.state, self.base)

    def state_json(self) -> dict[str, Any]:
        """The runtime's state file."""
        data: dict[str, Any] = json.loads((self.state / "state.json").read_text())
        return data

    def journal_json(self) -> dict[str, Any] | None:
        """The journal file, if any."""
        path = self.state / "journal.json"
        return json.loads(path.read_text()) if path.exists() else None

    def staging_entries(self) -> list[str]:
        """Whatever is left in the staging area."""
        staging = self.state / "staging"
        return sorted(p.name for p in staging.iterdir()) if staging.is_dir() else []

    def active_dir(self) -> Path:
        """The directory the active release's files are in."""
        return active_dir(self.root, self.layout)

    def snapshot(self) -> dict[str, str]:
        """Relative path → sha256 of every file of the agent root (runtime dirs excluded)."""
        out: dict[str, str] = {}
        for p in sorted(self.root.rglob("*")):
            rel = p.relative_to(self.root).as_posix()
            if (
                p.is_dir()
                or rel.split("/")[0] == "backup"
                or p.name.startswith(("heartbeat.json", ".heartbeat.json"))
            ):
                continue
            out[rel] = "link:" + os.readlink(p) if p.is_symlink() else _sha(p)
        return out

    def stray_files(self) -> list[str]:
        """Entries of the agent root that belong to no published release and are not the
        runtime's (backups, pointer) or the agent's (heartbeat) own: leftovers of a run."""
        release_paths = {rel for pub in self.published.values() for rel in pub.files}
        stray: list[str] = []
        if self.layout == "versioned":
            for p in sorted(self.root.iterdir()):
                if p.name not in ("releases", "current", "current.txt"):
                    stray.append(p.name)
            releases = self.root / "releases"
            if releases.is_dir():
                stray += [f"releases/{p.name}" for p in releases.iterdir() if p.name[0] == "."]
            return sorted(stray)
        for p in sorted(self.root.rglob("*")):
            rel = p.relative_to(self.root).as_posix()
            if (
                p.is_dir()
                or rel.split("/")[0] == "backup"
                or "__pycache__" in rel.split("/")
                or p.name.startswith(("heartbeat.json", ".heartbeat.json"))
            ):
                continue
            if rel not in release_paths:
                stray.append(rel)
        return stray

    def installed_release(self) -> str:
        """The one published release the active files match exactly; AssertionError otherwise."""
        active = self.active_dir()
        matches = []
        all_paths = {rel for pub in self.published.values() for rel in pub.files}
        for v, pub in self.published.items():
            ok = all(
                (active / rel).is_file() and _sha(active / rel) == hashlib.sha256(d).hexdigest()
                for rel, d in pub.files.items()
            )
            # a path of another release that this one does not have must be absent
            ok = ok and all(not (active / rel).exists() for rel in all_paths - set(pub.files))
            if ok:
                matches.append(v)
        distinct = {tuple(sorted((r, hashlib.sha256(d).hexdigest()) for r, d in
                              self.published[v].files.items())) for v in matches}  # fmt: skip
        assert len(distinct) == 1, f"agent root matches {matches or 'no release'}: {active}"
        return matches[0]

    def wait_heartbeat(self, version: str, timeout: float = 5.0) -> dict[str, Any]:
        """Wait for a fresh heartbeat of ``version`` from the running agent; return it."""
        path = self.active_dir() / "heartbeat.json"
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                last = json.loads(path.read_text())
                when = datetime.fromisoformat(last["time"])
                fresh = datetime.now(UTC) - when < timedelta(seconds=1.5)
                if last["version"] == version and fresh and self.agent_pid() == last["pid"]:
                    return dict(last)
            time.sleep(0.1)
        raise AssertionError(
            f"no fresh heartbeat of {version} (last: {last}, pid {self.agent_pid()})"
        )

    def assert_consistent(self) -> str:
        """The kill-matrix invariant; returns the installed release."""
        journal = self.journal_json()
        assert journal is None or journal["phase"] in ("DONE", "ROLLED_BACK", "FAILED"), journal
        version = self.installed_release()
        self.wait_heartbeat(version)
        assert self.state_json()["installed"] == version
        return version


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
