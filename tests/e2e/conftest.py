"""Fixtures: fleets of real device runtimes against a real `engine serve` on 127.0.0.1.

Built from the test harness (``tests/harness``):
each device is a temp dir with the example agent 3.0.0 installed (in-place or
versioned layout), a device config naming the server, the enrollment secret
and the pinned signing key, and its own `agent-runtime converge` process.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select

from engine.store import Store
from engine.store.schema import events, reports, rollout_devices, rollouts
from tests.bundles import RuntimeBundle, install_runtime_venv
from tests.harness import DeviceSpec, DeviceTimings, Fleet, wait_until
from tests.harness.supervised import SupervisedRuntime
from tests.runtime_releases import ReleaseBundles

MakeFleet = Callable[..., Fleet]


def fleet_group(release: str, **rollout: Any) -> dict[str, Any]:
    """One group over every demo-site device with the given rollout policy."""
    policy = {"waves": [10, 50, 100], "max_parallel": 3, "soak": "2s", "min_success_rate": 1.0,
              "max_failure_rate": 0.0}  # fmt: skip
    policy.update(rollout)
    return {"fleet": {"match": {"site": "demo"}, "agent": {"release": release}, "rollout": policy}}


def specs(count: int, prefix: str = "dev", **kw: Any) -> list[DeviceSpec]:
    """``count`` devices, platforms rotating over linux, windows, macos."""
    platforms = ("linux", "windows", "macos")
    return [DeviceSpec(f"{prefix}-{i:02d}", platforms[i % 3], **kw) for i in range(count)]


@pytest.fixture
def make_fleet(tmp_path: Path) -> Iterator[MakeFleet]:
    """Build fleets under tmp_path (half the devices in the versioned layout); every runtime,
    agent and server is stopped afterwards."""
    made: list[Fleet] = []

    def factory(devices: list[DeviceSpec], groups: dict[str, Any], **kw: Any) -> Fleet:
        kw.setdefault("layout", lambda i: "versioned" if i % 2 else "in_place")
        kw.setdefault("timings", DeviceTimings())
        fleet = Fleet(tmp_path / f"fleet{len(made)}", devices, groups, **kw)
        made.append(fleet)
        return fleet

    yield factory
    for fleet in made:
        fleet.stop()


class StoreView:
    """Read the server's store directly (the server may be down)."""

    def __init__(self, fleet: Fleet) -> None:
        default = f"sqlite:///{fleet.repo.root / '.engine' / 'state.db'}"
        self.url = fleet.server.state or default

    def _rows(self, query: Any) -> list[Any]:
        with Store.open(self.url, migrate=False) as store, store.read() as conn:
            return list(conn.execute(query).all())

    def rollout(self, name: str) -> Any:
        """The newest rollout row named ``name`` (group@release)."""
        rows = self._rows(select(rollouts).where(rollouts.c.name == name).order_by(rollouts.c.id))
        assert rows, f"no rollout {name}"
        return rows[-1]

    def devices(self, rollout_id: int) -> list[Any]:
        """Rows of the rollout's devices."""
        return self._rows(select(rollout_devices).where(rollout_devices.c.rollout_id == rollout_id))

    def events(self, target: str | None = None) -> list[Any]:
        """Step events, optionally only those for ``target``."""
        q = select(events)
        if target is not None:
            q = q.where(events.c.target == target)
        return self._rows(q.order_by(events.c.id))


def max_overlap(intervals: list[tuple[datetime, datetime]]) -> int:
    """The largest number of intervals open at one instant."""
    points = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals],
                    key=lambda p: (p[0], p[1]))  # fmt: skip
    best = cur = 0
    for _, step in points:
        cur += step
        best = max(best, cur)
    return best


def seconds(text: str) -> timedelta:
    """``"2s"`` as a timedelta."""
    from fleetbase.duration import parse_duration

    return parse_duration(text)


# -- devices whose runtime runs under the supervisor, and runtime releases -------------------


@pytest.fixture(scope="session")
def release_bundles(
    runtime_bundle: RuntimeBundle, tmp_path_factory: pytest.TempPathFactory
) -> ReleaseBundles:
    """A venv of the session's runtime bundle (every device's first runtime), built once per
    session; bundles of other runtime versions with its key are built on first use."""
    base = tmp_path_factory.mktemp("runtime-releases")
    bin_dir = install_runtime_venv(runtime_bundle.directory, base / "venv")
    manifest = json.loads((runtime_bundle.directory / "bundle.json").read_text())
    return ReleaseBundles(
        manifest["runtime_version"], bin_dir.parent, runtime_bundle.public_key,
        runtime_bundle.key_file, base,
    )  # fmt: skip


@pytest.fixture
def supervised() -> Iterator[list[SupervisedRuntime]]:
    """Supervisors started by a test; stopped (with their runtimes) afterwards."""
    made: list[SupervisedRuntime] = []
    yield made
    for s in made:
        s.stop()


def runtime_versions(view: StoreView) -> dict[str, str | None]:
    """Each device's last reported runtime version."""
    rows = view._rows(select(reports.c.device, reports.c.runtime_version))
    return {r.device: r.runtime_version for r in rows}


def set_runtime(fleet: Fleet, version: str, group: str = "fleet") -> None:
    """Give ``group`` of the fleet's inventory ``runtime: {release: version}``."""
    doc = yaml.safe_load(fleet.repo.inventory.read_text())
    doc["groups"][group]["runtime"] = {"release": version}
    fleet.repo.inventory.write_text(yaml.safe_dump(doc, sort_keys=False))


def _trust(fleet: Fleet, keys: list[str]) -> None:
    """engine.yaml (key files) and every device pin both the repo's key and the bundles'."""
    engine_yaml = fleet.repo.root / "engine.yaml"
    settings = yaml.safe_load(engine_yaml.read_text())
    (fleet.repo.root / "keys" / "runtime-bundles.pub").write_text(keys[1] + "\n")
    settings["trusted_keys"] = ["keys/release-signing.pub", "keys/runtime-bundles.pub"]
    engine_yaml.write_text(yaml.safe_dump(settings, sort_keys=False))
    for d in fleet.devices.values():
        d.write_config(keys[0], fleet.server.url, fleet.server.enrollment_secret, trusted_keys=keys)


def supervised_fleet(
    make_fleet: MakeFleet,
    release_bundles: ReleaseBundles,
    supervised: list[SupervisedRuntime],
    count: int,
    policy: dict[str, object],
    runtime_releases: dict[str, bool],
    unsupervised: int = 0,
    **kw: object,
) -> tuple[Fleet, StoreView]:
    """``count`` devices with agent 3.0.0 and their runtimes under supervisors, checked in;
    the runtime releases of ``runtime_releases`` (version: broken) made in the repo. The
    last ``unsupervised`` of them run a plain runtime instead (no supervisor, no home)."""
    fleet = make_fleet(
        specs(count), fleet_group("3.0.0", **policy), layout=lambda _i: "in_place", **kw
    )
    fleet.setup("3.0.0")
    _trust(fleet, [fleet.repo.public_key(), release_bundles.public_key])
    ids = sorted(fleet.devices)
    plain = ids[len(ids) - unsupervised :]
    for i in ids:
        if i in plain:
            continue
        sup = SupervisedRuntime(fleet.device(i))
        sup.prepare(release_bundles.base_version, release_bundles.base_venv)
        sup.start()
        supervised.append(sup)
    fleet.start(plain)
    view = StoreView(fleet)
    base = release_bundles.base_version
    wait_until(
        f"{count} runtimes {base} to check in",
        lambda: all(runtime_versions(view).get(i) == base for i in ids),
        timeout=120,
    )
    wait_until(
        "the agents to run", lambda: all(fleet.device(i).agent_pid() for i in ids), timeout=60
    )
    for version, broken in runtime_releases.items():
        bundles = release_bundles.bundles(version, broken=broken)
        made = fleet.repo.engine("runtime", "release", "--from", str(bundles), "--json")
        assert json.loads(made.stdout)["targets"]
    return fleet, view
