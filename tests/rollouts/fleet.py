"""Test helpers: an operator repo on disk, a controllable clock, simulated devices.

Simulated devices speak to the rollout engine the way ``engine serve`` does on
a check-in: store the device's report, then ask ``offer_for_device`` in the
same transaction; the agent's heartbeat lands in the ``heartbeats`` table.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import delete, insert, select

from engine.rollouts import ApplyResult, Offer, offer_for_device
from engine.rollouts.offers import clear_caches
from engine.service.apply import record_apply
from engine.service.plan import make_plan, plan_repo
from engine.service.repo import load_repo
from engine.store import Store
from engine.store.schema import heartbeats, reports, rollout_devices, rollouts
from fleetbase.version import Version
from states.plan import Plan
from states.report import Report

EXAMPLE_RELEASES = Path(__file__).resolve().parents[2] / "examples" / "fleet" / "releases"
T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


class Clock:
    """A clock tests move by hand."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        """Move forward by a timedelta given as keywords (minutes=5)."""
        self.now += timedelta(**delta)
        return self.now


def write_repo(
    root: Path,
    devices: dict[str, dict[str, Any]],
    groups: dict[str, dict[str, Any]],
    *,
    versions: tuple[str, ...] = ("3.0.0", "3.0.1", "3.0.2"),
) -> Path:
    """An operator repo at ``root`` with these devices and groups and example releases."""
    (root / "inventory").mkdir(parents=True, exist_ok=True)
    (root / "releases").mkdir(exist_ok=True)
    (root / "engine.yaml").write_text("stale_after: 3650d\n")
    (root / "inventory" / "fleet.yaml").write_text(
        yaml.safe_dump({"devices": devices, "groups": groups}, sort_keys=True)
    )
    for version in versions:
        shutil.copy(EXAMPLE_RELEASES / f"{version}.yaml", root / "releases" / f"{version}.yaml")
    return root


def linux_devices(prefix: str, count: int, **extra: Any) -> dict[str, dict[str, Any]]:
    """``count`` linux devices named prefix-0000... with extra fields."""
    return {f"{prefix}-{i:04d}": {"platform": "linux", **extra} for i in range(count)}


def set_release(root: Path, group: str, release: str) -> None:
    """Change the release a group should run."""
    path = root / "inventory" / "fleet.yaml"
    data = yaml.safe_load(path.read_text())
    data["groups"][group]["agent"] = {"release": release}
    path.write_text(yaml.safe_dump(data, sort_keys=True))


def report(device: str, version: str | None, now: datetime, result: str | None = None) -> Report:
    """A linux device's report."""
    return Report(
        device=device,
        agent_version=Version(version) if version else None,
        platform="linux",  # type: ignore[arg-type]
        last_seen=now,
        last_result=result,
    )


def plan_now(root: Path, url: str, now: datetime) -> Plan:
    """The plan `engine plan` would make at ``now``."""
    return plan_repo(root, state=url, now=now)


def apply_plan(root: Path, store: Store, now: datetime, plan: Plan | None = None) -> ApplyResult:
    """Plan (unless given) and record rollouts, as `engine apply --yes` does."""
    clear_caches()
    repo = load_repo(root)
    if plan is None:
        plan = make_plan(repo, store, now=now)
    return record_apply(store, plan, repo, now)


@dataclass
class SimDevice:
    """A device that checks in, runs the plan it gets, and reports the outcome."""

    name: str
    version: str | None
    last_result: str | None = None
    plan: Offer | None = None

    def checkin(self, store: Store, now: datetime) -> Offer | None:
        """Report and ask for a plan, like a server check-in; remembers the plan."""
        rep = report(self.name, self.version, now, self.last_result)
        with store.write() as conn:
            from engine.store import _reports

            _reports.upsert(conn, [rep])
            offer = offer_for_device(conn, self.name, rep, now)
        if offer is not None:
            self.plan = offer
        return offer

    def succeed(self, store: Store, now: datetime) -> None:
        """Run the plan it got: now on its desired version, committed, heartbeating."""
        assert self.plan is not None and self.plan.plan.desired is not None
        self.version = str(self.plan.plan.desired)
        self.last_result = "committed"
        self.plan = None
        heartbeat(store, self.name, self.version, now)
        store.upsert_reports([report(self.name, self.version, now, self.last_result)])

    def fail(self, store: Store, now: datetime) -> None:
        """Run the plan it got and fail: the runtime rolled back to the old version."""
        assert self.plan is not None
        self.last_result = "rolled_back"
        self.plan = None
        store.upsert_reports([report(self.name, self.version, now, self.last_result)])


def heartbeat(store: Store, device: str, version: str, now: datetime) -> None:
    """Record the agent's heartbeat as the server does."""
    with store.write() as conn:
        conn.execute(delete(heartbeats).where(heartbeats.c.device == device))
        conn.execute(
            insert(heartbeats).values(
                device=device, version=version, at=now, pid=1, received_at=now
            )
        )


def device_states(store: Store, rollout_id: int | None = None) -> dict[str, str]:
    """State of each device in a rollout (the newest when not given)."""
    with store.read() as conn:
        if rollout_id is None:
            rollout_id = conn.execute(
                select(rollouts.c.id).order_by(rollouts.c.id.desc()).limit(1)
            ).scalar_one()
        rows = conn.execute(
            select(rollout_devices.c.device, rollout_devices.c.state).where(
                rollout_devices.c.rollout_id == rollout_id
            )
        ).all()
    return {d: s for d, s in rows}


def device_waves(store: Store, rollout_id: int) -> dict[str, int]:
    """Wave of each device in a rollout."""
    with store.read() as conn:
        rows = conn.execute(
            select(rollout_devices.c.device, rollout_devices.c.wave).where(
                rollout_devices.c.rollout_id == rollout_id
            )
        ).all()
    return {d: w for d, w in rows}


def rollout_row(store: Store, rollout_id: int) -> Any:
    """The rollouts row."""
    with store.read() as conn:
        return conn.execute(select(rollouts).where(rollouts.c.id == rollout_id)).one()


def stored_report(store: Store, device: str) -> Any:
    """The reports row of a device."""
    with store.read() as conn:
        return conn.execute(select(reports).where(reports.c.device == device)).one()
