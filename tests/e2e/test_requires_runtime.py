"""Release requirements end to end with real runtimes: a device whose runtime is too old for a
release is blocked and waits; once its runtime is a newer one (here: reinstalled by hand from
a bundle of runtime 0.2.0), it reports that version and the release reaches it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine.bundles import local_target
from tests.bundles import REPO_ROOT, install_runtime_venv, offline_pip_env, require_wheelhouse
from tests.e2e.conftest import MakeFleet, StoreView, fleet_group
from tests.harness import DeviceSpec, wait_until

pytestmark = pytest.mark.slow

NEW_RUNTIME = "0.2.0"
_PACKAGES = ("fleetbase", "states", "inventory", "engine", "agent_runtime")


def _runtime_of_version(tmp: Path, version: str) -> Path:
    """A venv with the runtime built from this source tree as ``version``; its python."""
    wheelhouse = require_wheelhouse()
    src = tmp / "src"
    src.mkdir(parents=True)
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    (src / "pyproject.toml").write_text(
        re.sub(r'(?m)^version = "[^"]+"$', f'version = "{version}"', pyproject, count=1)
    )
    shutil.copy2(REPO_ROOT / "README.md", src / "README.md")
    for package in _PACKAGES:
        shutil.copytree(
            REPO_ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    out = tmp / "bundles"
    cmd = [sys.executable, "-m", "engine", "runtime", "bundle", "-C", str(tmp), "--json",
           "--no-index", "--find-links", str(wheelhouse), "--out", str(out)]  # fmt: skip
    env = {k: v for k, v in offline_pip_env().items() if not k.startswith("ENGINE_")}
    env["PYTHONPATH"] = str(src)  # the engine of that tree builds the wheel from it
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=env, cwd=src, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (built,) = json.loads(proc.stdout)["bundles"]
    assert built["runtime_version"] == version, built
    bin_dir = install_runtime_venv(out / local_target().name, tmp / "venv")
    shown = subprocess.run(
        [str(bin_dir / "agent-runtime"), "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={k: v for k, v in env.items() if k != "PYTHONPATH"},
    )
    assert shown.stdout.split()[-1] == version
    return bin_dir / "python"


def test_too_old_runtime_is_blocked_until_a_newer_runtime_reports_then_updates(
    tmp_path: Path, make_fleet: MakeFleet
) -> None:
    """3.0.1 requires runtime >=0.2.0. Both devices run runtime 0.1.0 (this checkout's):
    the plan blocks both, the rollout holds them pending; fresh-0's runtime is replaced by
    runtime 0.2.0 (a real install from a bundle) and restarted: it reports 0.2.0, is offered
    3.0.1 and commits it; old-0 stays on 3.0.0, pending, with the reason."""
    python = _runtime_of_version(tmp_path / "runtime-0.2.0", NEW_RUNTIME)
    groups = fleet_group("3.0.0", waves=[100], min_success_rate=0.5, max_parallel=2)
    fleet = make_fleet([DeviceSpec("fresh-0"), DeviceSpec("old-0")], groups)
    fleet.setup("3.0.0")
    fleet.start()
    fleet.wait_reported("3.0.0")

    manifest = fleet.repo.root / "releases" / "3.0.1.yaml"
    manifest.write_text(manifest.read_text() + "requires: {runtime: '>=0.2.0'}\n")
    fleet.repo.engine("release", "sign", str(manifest), "--key", str(fleet.repo.key))
    fleet.repo.set_release("3.0.1")
    plan = fleet.repo.engine("plan", "--verbose").stdout
    assert plan.count("needs runtime >=0.2.0, has 0.1.0") == 2, plan
    assert "2 blocked (2 waiting for their runtime)" in plan
    fleet.repo.engine("apply", "--yes")
    view = StoreView(fleet)
    rollout = view.rollout("fleet@3.0.1")

    def states() -> dict[str, str]:
        return {r.device: r.state for r in view.devices(rollout.id)}

    assert states() == {"fresh-0": "pending", "old-0": "pending"}

    fresh = fleet.device("fresh-0")
    fresh.stop()
    fresh.start(python=python)
    wait_until(
        "fresh-0 on 3.0.1",
        lambda: fresh.installed() == "3.0.1" and fresh.heartbeating("3.0.1"),
        timeout=120,
        interval=0.5,
    )
    wait_until("fresh-0 succeeded", lambda: states()["fresh-0"] == "succeeded", timeout=60)
    old = {r.device: r for r in view.devices(rollout.id)}["old-0"]
    assert old.state == "pending" and old.attempts == 0
    assert old.reason.startswith("release 3.0.1 needs runtime >=0.2.0, has 0.1.0")
    assert fleet.device("old-0").installed() == "3.0.0"
    assert [t for t in fresh.transactions() if t[0] == "3.0.1"] == [("3.0.1", "committed")]
