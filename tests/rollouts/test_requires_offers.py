"""The controller and devices waiting for their runtime (requires: runtime): passed over until
the runtime version they report meets the requirement, without starving the others."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from sqlalchemy import select

from engine.rollouts import RolloutController
from engine.store import Store
from engine.store.schema import rollout_devices
from engine.waves import wave_fraction
from fleetbase.platform import Platform
from fleetbase.version import Version
from states.report import Report
from tests.rollouts.fleet import Clock, apply_plan, device_states, linux_devices, write_repo

WAITING = 120  # more than the controller's candidate margin (slots + 100)


def _report(device: str, runtime: str, now: datetime) -> Report:
    return Report(
        device=device,
        agent_version=Version("3.0.0"),
        platform=Platform.LINUX,
        last_seen=now,
        runtime_version=runtime,
    )


def _rows(store: Store, rollout_id: int) -> dict[str, tuple[str, str | None, str | None]]:
    rd = rollout_devices
    with store.read() as conn:
        rows = conn.execute(
            select(rd.c.device, rd.c.state, rd.c.reason, rd.c.requires_runtime).where(
                rd.c.rollout_id == rollout_id
            )
        ).all()
    return {r.device: (r.state, r.reason, r.requires_runtime) for r in rows}


def test_waiting_devices_are_passed_over_until_their_runtime_meets_the_requirement(
    tmp_path: Path, store: Store
) -> None:
    """120 devices on runtime 0.1.0 wait for >=0.2.0; the one device on 0.2.0 is offered
    even though it sorts after all of them; a waiting device that reports 0.2.0 is offered at
    the next tick and its waiting reason is cleared; a device still on 0.1.0 is not."""
    clock = Clock()
    waiting = linux_devices("old", WAITING)
    last = max(wave_fraction("prod", d) for d in waiting)
    ready = next(f"ready-{i}" for i in range(10_000) if wave_fraction("prod", f"ready-{i}") > last)
    devices = {**waiting, ready: {"platform": "linux"}}
    group = {
        "match": {"platform": "linux"},
        "agent": {"release": "3.0.1"},
        "rollout": {"waves": [100], "max_parallel": 2, "soak": "0s"},
    }
    root = write_repo(tmp_path / "repo", devices, {"prod": group})
    manifest = root / "releases" / "3.0.1.yaml"
    manifest.write_text(manifest.read_text() + "requires: {runtime: '>=0.2.0'}\n")
    store.upsert_reports([_report(d, "0.1.0", clock.now) for d in waiting])
    store.upsert_reports([_report(ready, "0.2.0", clock.now)])

    (recorded,) = apply_plan(root, store, clock.now).rollouts
    rows = _rows(store, recorded.id)
    assert rows[ready] == ("pending", None, None)
    assert {r[0] for d, r in rows.items() if d != ready} == {"pending"}
    assert {r[2] for d, r in rows.items() if d != ready} == {">=0.2.0"}
    assert rows["old-0000"][1] == (
        "release 3.0.1 needs runtime >=0.2.0, has 0.1.0; waits in the rollout until its "
        "runtime reports a version that meets it"
    )

    controller = RolloutController(store, clock=clock)
    controller.tick()
    states = device_states(store, recorded.id)
    assert states.pop(ready) == "offered"
    assert set(states.values()) == {"pending"}  # a slot is free, but none of them may take it

    clock.advance(seconds=10)
    store.upsert_reports([_report("old-0007", "0.2.0", clock.now)])
    controller.tick()
    rows = _rows(store, recorded.id)
    assert rows["old-0007"][:2] == ("offered", None)
    assert rows["old-0008"][0] == "pending"
    assert rows["old-0008"][1] is not None and "has 0.1.0" in rows["old-0008"][1]
