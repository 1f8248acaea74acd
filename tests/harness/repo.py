"""An operator repo on disk for tests and benches: the example releases, signed with a new key."""

from __future__ import annotations

import contextlib
import hashlib
import io
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.harness.procs import REPO_ROOT, child_env

__all__ = ["EXAMPLE_FLEET", "RELEASES", "DeviceSpec", "OperatorRepo"]

EXAMPLE_FLEET = REPO_ROOT / "examples" / "fleet"
RELEASES = ("3.0.0", "3.0.1", "3.0.2", "3.0.3", "3.0.4")


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
        settings: dict[str, Any] | None = None,
        out: Callable[[str], None] = lambda _line: None,
    ) -> None:
        """Copy the example releases and artifacts, write the inventory, keygen, and sign;
        ``settings`` adds to engine.yaml."""
        (self.root / "inventory").mkdir(parents=True, exist_ok=True)
        (self.root / "releases").mkdir(exist_ok=True)
        for v in RELEASES:
            shutil.copy2(EXAMPLE_FLEET / "releases" / f"{v}.yaml", self.root / "releases")
            shutil.copytree(EXAMPLE_FLEET / "artifacts" / v, self.root / "artifacts" / v)
        engine_yaml = {"poll_interval": poll_interval, "stale_after": "1d", **(settings or {})}
        (self.root / "engine.yaml").write_text(yaml.safe_dump(engine_yaml, sort_keys=False))
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
            env=child_env(env),
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
