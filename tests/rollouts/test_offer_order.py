"""Which pending devices get free slots first: the ones due to check in soonest."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from engine.rollouts import RolloutController, _reads
from engine.rollouts.model import Timings
from engine.store import Store
from engine.waves import wave_fraction
from fleetbase.platform import Platform
from fleetbase.version import Version
from states.report import Report
from tests.rollouts.fleet import (
    Clock,
    SimDevice,
    apply_plan,
    device_states,
    linux_devices,
    report,
    write_repo,
)

POLICY = {"waves": [100], "soak": "0s", "max_parallel": 2}
#: seconds since each device (in stable position order) was last seen; poll 60 s.
#: The device seen 300 s ago has missed its check-ins: it comes last.
SEEN_AGO = [5, 20, 300, 40, 80, 50]


def _offered(store: Store, rollout_id: int) -> set[str]:
    return {d for d, s in device_states(store, rollout_id).items() if s == "offered"}


def _fleet(tmp_path: Path, store: Store, clock: Clock) -> tuple[int, list[str]]:
    """Six pending devices in one wave, last seen ``SEEN_AGO`` before now in position order."""
    devices = linux_devices("srv", len(SEEN_AGO))
    group = {"match": {"platform": "linux"}, "agent": {"release": "3.0.1"}, "rollout": POLICY}
    root = write_repo(tmp_path / "repo", devices, {"prod": group})
    by_position = sorted(devices, key=lambda d: wave_fraction("prod", d))
    store.upsert_reports(
        [
            report(d, "3.0.0", clock.now - timedelta(seconds=ago))
            for d, ago in zip(by_position, SEEN_AGO, strict=True)
        ]
    )
    (recorded,) = apply_plan(root, store, clock.now).rollouts
    return recorded.id, by_position


def test_free_slots_go_to_the_devices_due_to_check_in_soonest(tmp_path: Path, store: Store) -> None:
    """Seen longest ago first, overdue devices after the punctual ones, two slots at a time."""
    clock = Clock()
    rollout_id, by_position = _fleet(tmp_path, store, clock)
    due_order = [by_position[i] for i in (4, 5, 3, 1, 0, 2)]  # 80, 50, 40, 20, 5, then 300 s
    timings = Timings(poll_interval=timedelta(seconds=60))
    controller = RolloutController(store, clock=clock, timings=timings)

    taken: list[set[str]] = []
    for _ in range(3):
        controller.tick()
        offered = _offered(store, rollout_id)
        taken.append(offered)
        sims = [SimDevice(name, "3.0.0") for name in sorted(offered)]
        assert all(sim.checkin(store, clock.now) is not None for sim in sims)
        clock.advance(seconds=2)
        for sim in sims:
            sim.succeed(store, clock.now)
        controller.tick()  # judges them: their slots are free again
        clock.advance(seconds=1)
    assert taken == [set(due_order[0:2]), set(due_order[2:4]), set(due_order[4:6])]


def test_without_a_poll_interval_slots_go_in_stable_position(tmp_path: Path, store: Store) -> None:
    """A controller that does not know the devices' poll interval offers in position order."""
    clock = Clock()
    rollout_id, by_position = _fleet(tmp_path, store, clock)
    controller = RolloutController(store, clock=clock, timings=Timings())

    controller.tick()
    assert _offered(store, rollout_id) == set(by_position[0:2])


def test_devices_whose_runtime_came_to_meet_the_release_are_offered_in_due_order_too(
    tmp_path: Path, store: Store
) -> None:
    """Devices that waited for their runtime (sorted apart from the statement) keep the order."""
    clock = Clock()
    devices = linux_devices("srv", len(SEEN_AGO))
    group = {"match": {"platform": "linux"}, "agent": {"release": "3.0.1"}, "rollout": POLICY}
    root = write_repo(tmp_path / "repo", devices, {"prod": group})
    manifest = root / "releases" / "3.0.1.yaml"
    manifest.write_text(manifest.read_text() + "requires: {runtime: '>=0.2.0'}\n")
    by_position = sorted(devices, key=lambda d: wave_fraction("prod", d))

    def reports(runtime: str) -> list[Report]:
        return [
            Report(
                device=d,
                agent_version=Version("3.0.0"),
                platform=Platform.LINUX,
                last_seen=clock.now - timedelta(seconds=ago),
                runtime_version=runtime,
            )
            for d, ago in zip(by_position, SEEN_AGO, strict=True)
        ]

    store.upsert_reports(reports("0.1.0"))
    (recorded,) = apply_plan(root, store, clock.now).rollouts
    store.upsert_reports(reports("0.2.0"))  # every runtime meets the requirement now
    timings = Timings(poll_interval=timedelta(seconds=60))
    RolloutController(store, clock=clock, timings=timings).tick()
    assert _offered(store, recorded.id) == {by_position[4], by_position[5]}  # 80 s, 50 s


def test_with_more_pending_than_the_sample_the_first_in_position_are_sorted_by_due(
    tmp_path: Path, store: Store
) -> None:
    """The due order is taken among the first ``sample`` online pending devices in stable
    position (an index range), not among all of them; offline devices take no place."""
    clock = Clock()
    rollout_id, by_position = _fleet(tmp_path, store, clock)

    def search(online_for: int) -> list[str]:
        with store.read() as conn:
            found = _reads.offer_candidates(
                conn,
                rollout_id,
                last_wave=0,
                online_since=clock.now - timedelta(seconds=online_for),
                now=clock.now,
                limit=2,
                overdue_before=clock.now - timedelta(seconds=90),
                sample=4,
            )
        return [device for device, _ in found]

    # the first four in position were seen 5, 20, 300 (overdue) and 40 s ago
    assert search(online_for=3600) == [by_position[3], by_position[1]]  # 40 s, 20 s
    # offline (seen 300 s ago): the sample is the next four online, 5, 20, 40 and 80 s ago
    assert search(online_for=100) == [by_position[4], by_position[3]]  # 80 s, 40 s
