"""Statements about named devices of a rollout use the index on the device, whatever the
planner's statistics say: a plan through the index on (rollout_id, state, ...) reads every
row of the rollout in that state for each device (a large rollout then crawls)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, insert, text, update

from engine.rollouts._store import of_rollout
from engine.rollouts.offers import _Sql
from engine.store import Store
from engine.store.schema import rollout_devices, rollouts
from tests.rollouts.fleet import Clock, apply_plan, linux_devices, report, write_repo

DEVICE_INDEX = "ix_rollout_devices_device_state"
ROLLOUT_INDEX = "ix_rollout_devices_rollout_state"
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _rollout(conn: Connection, devices: int) -> int:
    """A live rollout with ``devices`` devices, pending or offered (no statistics gathered)."""
    rid = conn.execute(
        insert(rollouts)
        .values(
            name="fleet@3.0.1",
            group_name="fleet",
            release="3.0.1",
            priority=0,
            policy="{}",
            state="active",
            current_wave=0,
            created_at=NOW,
            updated_at=NOW,
        )
        .returning(rollouts.c.id)
    ).scalar_one()
    rows = [
        {
            "rollout_id": rid,
            "device": f"d-{i:05d}",
            "wave": 0,
            "position": float(i),
            "platform": "linux",
            "state": "offered" if i % 2 else "pending",
            "attempts": 0,
            "updated_at": NOW,
        }
        for i in range(devices)
    ]
    conn.execute(insert(rollout_devices), rows)
    return int(rid)


def _plan(conn: Connection, statement: str, params: tuple[Any, ...]) -> str:
    """How the store runs ``statement`` (driver placeholders) with ``params``."""
    raw = conn.connection.driver_connection
    assert raw is not None
    rows = raw.execute(
        f"EXPLAIN QUERY PLAN {statement}"
        if conn.dialect.name == "sqlite"
        else f"EXPLAIN {statement}",
        params,
    ).fetchall()
    return "\n".join(str(r[-1]) for r in rows)


def test_checkin_statements_use_the_device_index(store: Store) -> None:
    """The check-in's offer lookups and takes, on a rollout the planner has no statistics of."""
    sql = None
    with store.write() as conn:
        rid = _rollout(conn, 3000)
        sql = _Sql.of(conn)
        many: Any = '["d-00001", "d-00002"]' if sql.sqlite else ["d-00001", "d-00002"]
        stamp = sql.stamp(NOW)
        checks = {
            "select": (sql.select, ("d-00001",)),
            "select_many": (sql.select_many, (many,)),
            "take": (sql.take, (stamp, "3.0.0", stamp, rid, "d-00001")),
            "take_rollback": (sql.take_rollback, (stamp, stamp, rid, "d-00001")),
        }
        plans = {name: _plan(conn, s, p) for name, (s, p) in checks.items()}
        conn.rollback()
    for name, plan in plans.items():
        assert DEVICE_INDEX in plan, f"{name}:\n{plan}"
        assert ROLLOUT_INDEX not in plan, f"{name}:\n{plan}"


def test_controller_moves_listed_devices_through_the_device_index(store: Store) -> None:
    """The controller's set-based move of named devices, after `engine apply` recorded the
    rollout (which refreshes PostgreSQL's statistics)."""
    with store.write() as conn:
        rid = _rollout(conn, 20_000)
    store.analyze([rollout_devices.name, rollouts.name])
    with store.write() as conn:
        rd = rollout_devices
        chosen = [f"d-{i:05d}" for i in range(0, 200, 2)]
        statement = (
            update(rd)
            .where(of_rollout(rid), rd.c.device.in_(chosen), rd.c.state == "pending")
            .values(state="offered", offered_at=NOW, updated_at=NOW)
        )
        literal = str(statement.compile(conn, compile_kwargs={"literal_binds": True}))
        plan = _plan(conn, literal, ())
        done = conn.execute(statement).rowcount
    assert DEVICE_INDEX in plan, plan
    assert done == len(chosen)


@pytest.mark.postgres
def test_apply_gives_postgresql_the_size_of_the_reports_table(
    tmp_path: Path, postgres_url: str
) -> None:
    """Reports written since the store was created look like an empty table to the planner
    until something analyses it; recording a rollout does (the controller's offer search
    joins the reports, and planned it as one index lookup per report without statistics)."""
    clock = Clock()
    devices = linux_devices("srv", 3000)
    group = {"match": {"platform": "linux"}, "agent": {"release": "3.0.1"}}
    root = write_repo(tmp_path / "repo", devices, {"prod": group})
    with Store.open(postgres_url) as store:
        store.upsert_reports([report(d, "3.0.0", clock.now) for d in devices])
        before = _planner_rows(store, "reports")
        apply_plan(root, store, clock.now)
        after = _planner_rows(store, "reports")
    assert before < 1000, before  # never analysed: the planner guesses
    assert after == 3000


def _planner_rows(store: Store, table: str) -> float:
    """The row count PostgreSQL's planner assumes for ``table`` (pg_class.reltuples)."""
    with store.read() as conn:
        found = conn.execute(
            text("SELECT reltuples FROM pg_class WHERE relname = :t"), {"t": table}
        ).scalar_one()
    return float(found)
