"""Runtime rollouts in the store: recorded beside the agent's, offered at check-in, judged on
the runtime's reports, halted by the failure rate (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

import yaml
from sqlalchemy import select

from engine.rollouts import RolloutController
from engine.rollouts.offers import decide_offer, offer_rows
from engine.server._device_db import DeviceSql, upsert_checkin
from engine.store import Store
from engine.store.schema import rollouts
from states.protocol import (
    FEATURE_CONFIG,
    FEATURE_RUNTIME_UPDATE,
    CheckinRequest,
    RuntimeOffer,
)
from states.report import Report
from tests.rollouts.fleet import Clock, apply_plan, device_states, linux_devices, write_repo

TARGET = "linux-x86_64-py3.11"


def _repo(tmp_path: Path, runtime: str) -> Path:
    devices = linux_devices("box", 4)
    policy = {"waves": [100], "max_parallel": 4, "soak": "0s", "max_failure_rate": 0.0}
    root = write_repo(
        tmp_path / "repo",
        devices,
        {"prod": {"match": {"platform": "linux"}, "agent": {"release": "3.0.1"},
                  "runtime": {"release": runtime}, "rollout": policy}},
    )  # fmt: skip
    for version in ("0.2.0", "0.3.0"):  # what the planner looks for: a target's bundle.json
        bundle = root / "runtime-releases" / version / TARGET
        bundle.mkdir(parents=True)
        (bundle / "bundle.json").write_text("{}")
    return root


def _checkin(
    store: Store, device: str, body: Mapping[str, object], now: datetime
) -> RuntimeOffer | None:
    """A check-in as the server handles it: the report stored, the offer decided and taken.
    The runtime runs under the supervisor (it says it can update itself)."""
    able = {"features": [FEATURE_CONFIG, FEATURE_RUNTIME_UPDATE]}
    request = CheckinRequest.model_validate(
        {"platform": "linux", "agent_version": "3.0.1", **able, **body}
    )
    rep = Report(
        device=device, agent_version=request.agent_version, platform=request.platform,
        last_seen=now, runtime_version=request.runtime_version,
    )  # fmt: skip
    update = request.runtime_update
    failed = update.target if update is not None and update.result != "confirmed" else None
    with store.write() as conn:
        upsert_checkin(conn, DeviceSql(conn.dialect.name), device, request, now)
        rows = offer_rows(conn, [device]).get(device, [])
        decision = decide_offer(conn, device, rows, rep, now, runtime_failed=failed)
        assert decision.offer is None  # the agent is where its group wants it
        if decision.runtime_take is not None:
            assert decision.runtime_take.apply(conn)
    return decision.runtime


def test_runtime_rollout_beside_the_agents_offered_judged_and_halted(
    tmp_path: Path, store: Store
) -> None:
    clock = Clock()
    root = _repo(tmp_path, "0.2.0")
    devices = sorted(linux_devices("box", 4))
    for d in devices:
        assert _checkin(store, d, {"runtime_version": "0.1.0"}, clock.now) is None
    recorded = {r.name: r for r in apply_plan(root, store, clock.now).rollouts}
    assert set(recorded) == {"prod@3.0.1", "prod@runtime-0.2.0"}
    runtime_id = recorded["prod@runtime-0.2.0"].id
    assert recorded["prod@runtime-0.2.0"].pending == 4
    with store.read() as conn:
        components = dict(conn.execute(select(rollouts.c.name, rollouts.c.component)).all())
    assert components == {"prod@3.0.1": "agent", "prod@runtime-0.2.0": "runtime"}

    controller = RolloutController(store, clock=clock)
    controller.tick()
    assert set(device_states(store, runtime_id).values()) == {"offered"}
    clock.advance(seconds=1)
    for d in devices:
        offer = _checkin(store, d, {"runtime_version": "0.1.0"}, clock.now)
        assert offer == RuntimeOffer(
            version="0.2.0", rollout="prod@runtime-0.2.0", releases="/runtime/releases/0.2.0/"
        )
    assert set(device_states(store, runtime_id).values()) == {"in_progress"}
    # an answer lost on the way: the same offer again while in progress
    clock.advance(seconds=1)
    assert _checkin(store, devices[0], {"runtime_version": "0.1.0"}, clock.now) is not None

    clock.advance(seconds=5)
    kept = {"target": "0.2.0", "result": "confirmed"}
    for d in devices[:3]:  # the new runtime checks in, and the supervisor keeps it
        assert _checkin(store, d, {"runtime_version": "0.2.0"}, clock.now) is None
        body = {"runtime_version": "0.2.0", "runtime_update": kept}
        assert _checkin(store, d, body, clock.now) is None
    reverted = {"target": "0.2.0", "result": "reverted", "detail": "exited with 3"}
    body = {"runtime_version": "0.1.0", "runtime_update": reverted}
    assert _checkin(store, devices[3], body, clock.now) is None  # no offer after a failure
    clock.advance(seconds=1)
    controller.tick()
    states = device_states(store, runtime_id)
    assert [states[d] for d in devices] == ["succeeded"] * 3 + ["failed"]
    with store.read() as conn:
        row = conn.execute(
            select(rollouts.c.state, rollouts.c.reason).where(rollouts.c.id == runtime_id)
        ).one()
        agent_state = conn.execute(
            select(rollouts.c.state).where(rollouts.c.name == "prod@3.0.1")
        ).scalar_one()
    assert row.state == "halted" and "max_failure_rate" in row.reason
    assert agent_state == "completed"  # the agent's rollout is not the runtime's business
    # halted: the three that moved stay (no rollback plans), no more offers
    assert _checkin(store, devices[3], body, clock.now) is None


def test_a_new_runtime_release_supersedes_only_the_runtime_rollout(
    tmp_path: Path, store: Store
) -> None:
    clock = Clock()
    root = _repo(tmp_path, "0.2.0")
    for d in sorted(linux_devices("box", 4)):
        _checkin(store, d, {"runtime_version": "0.1.0"}, clock.now)
    first = {r.name: r.id for r in apply_plan(root, store, clock.now).rollouts}
    inventory = root / "inventory" / "fleet.yaml"
    doc = yaml.safe_load(inventory.read_text())
    doc["groups"]["prod"]["runtime"] = {"release": "0.3.0"}
    inventory.write_text(yaml.safe_dump(doc))
    clock.advance(seconds=5)
    result = apply_plan(root, store, clock.now)
    assert [r.name for r in result.rollouts] == ["prod@runtime-0.3.0"]
    assert result.rollouts[0].superseded == (first["prod@runtime-0.2.0"],)
    with store.read() as conn:
        states = dict(conn.execute(select(rollouts.c.name, rollouts.c.state)).all())
    assert states["prod@runtime-0.2.0"] == "superseded"
    assert states["prod@3.0.1"] in ("active", "completed")
