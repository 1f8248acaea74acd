"""The rollout and device transition tables: every row walked on a real store, the rest refused."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Connection, insert, select

from engine.rollouts import _store
from engine.rollouts.errors import IllegalTransitionError
from engine.rollouts.model import DeviceState, RolloutState
from engine.rollouts.transitions import (
    DEVICE_TRANSITIONS,
    ROLLOUT_TRANSITIONS,
    DeviceEvent,
    RolloutEvent,
    device_sources,
    next_device_state,
    next_rollout_state,
    render_tables,
    rollout_sources,
)
from engine.store import Store
from engine.store.schema import rollout_devices, rollouts

NOW = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[2]


def _rollout(conn: Connection, state: RolloutState) -> int:
    return int(
        conn.execute(
            insert(rollouts)
            .values(
                name="prod@3.0.1",
                group_name="prod",
                release="3.0.1",
                priority=0,
                policy="{}",
                state=state.value,
                current_wave=0,
                created_at=NOW,
                updated_at=NOW,
            )
            .returning(rollouts.c.id)
        ).scalar_one()
    )


def _device(conn: Connection, rollout_id: int, device: str, state: DeviceState) -> None:
    conn.execute(
        insert(rollout_devices).values(
            rollout_id=rollout_id,
            device=device,
            wave=0,
            position=0.5,
            platform="linux",
            state=state.value,
            attempts=1,
            updated_at=NOW,
        )
    )


def _rollout_state(conn: Connection, rollout_id: int) -> str:
    return str(conn.execute(select(rollouts.c.state).where(rollouts.c.id == rollout_id)).scalar())


def _device_state(conn: Connection, rollout_id: int, device: str) -> str:
    query = select(rollout_devices.c.state).where(
        rollout_devices.c.rollout_id == rollout_id, rollout_devices.c.device == device
    )
    return str(conn.execute(query).scalar())


def test_every_rollout_row_moves_a_stored_rollout(store: Store) -> None:
    """Each (state, event) row of ROLLOUT_TRANSITIONS moves a stored rollout to the row's state."""
    with store.write() as conn:
        for (state, event), to in ROLLOUT_TRANSITIONS.items():
            rid = _rollout(conn, state)
            moved = _store.move_rollout(conn, rid, state, event, reason="test", now=NOW)
            assert moved is to, (state, event)
            assert _rollout_state(conn, rid) == to.value, (state, event)


def test_every_device_row_moves_a_stored_device(store: Store) -> None:
    """Each (state, event) row of DEVICE_TRANSITIONS moves a stored device to the row's state."""
    with store.write() as conn:
        rid = _rollout(conn, RolloutState.ACTIVE)
        for n, ((state, event), to) in enumerate(DEVICE_TRANSITIONS.items()):
            device = f"dev-{n:03d}"
            _device(conn, rid, device, state)
            assert _store.move_device(conn, rid, device, state, event, now=NOW) is to
            assert _device_state(conn, rid, device) == to.value, (state, event)


def test_illegal_transitions_raise_and_change_nothing(store: Store) -> None:
    """Every (state, event) pair missing from the tables raises; the stored row stays as it was."""
    with store.write() as conn:
        for state, event in itertools.product(RolloutState, RolloutEvent):
            if (state, event) in ROLLOUT_TRANSITIONS:
                continue
            rid = _rollout(conn, state)
            with pytest.raises(IllegalTransitionError, match=f"{state.value} rollout cannot"):
                _store.move_rollout(conn, rid, state, event, reason="test", now=NOW)
            assert _rollout_state(conn, rid) == state.value
        rid = _rollout(conn, RolloutState.ACTIVE)
        for n, (dstate, devent) in enumerate(itertools.product(DeviceState, DeviceEvent)):
            if (dstate, devent) in DEVICE_TRANSITIONS:
                continue
            device = f"dev-{n:03d}"
            _device(conn, rid, device, dstate)
            with pytest.raises(IllegalTransitionError, match=f"{dstate.value} device cannot"):
                _store.move_device(conn, rid, device, dstate, devent, now=NOW)
            assert _device_state(conn, rid, device) == dstate.value


def test_bulk_moves_touch_only_the_events_source_states(store: Store) -> None:
    """A set-based device move (cancel) changes exactly the rows whose state the table allows."""
    with store.write() as conn:
        rid = _rollout(conn, RolloutState.ACTIVE)
        for state in DeviceState:
            _device(conn, rid, state.value, state)
        _store.move_devices(conn, [rid], DeviceEvent.CANCEL, now=NOW, reason="aborted")
        for state in DeviceState:
            expected = (
                DeviceState.CANCELLED if state in device_sources(DeviceEvent.CANCEL) else state
            )
            assert _device_state(conn, rid, state.value) == expected.value, state
        ids = {s: _rollout(conn, s) for s in RolloutState}
        _store.move_rollouts(conn, list(ids.values()), RolloutEvent.ABORT, reason="x", now=NOW)
        for rstate, i in ids.items():
            aborted = rstate in rollout_sources(RolloutEvent.ABORT)
            assert _rollout_state(conn, i) == (RolloutState.ABORTED if aborted else rstate).value


def test_a_stale_rollout_state_is_refused(store: Store) -> None:
    """Moving a rollout from a state it is no longer in raises instead of overwriting it."""
    with store.write() as conn:
        rid = _rollout(conn, RolloutState.HALTED)
        with pytest.raises(IllegalTransitionError, match="no longer active"):
            _store.move_rollout(
                conn, rid, RolloutState.ACTIVE, RolloutEvent.PAUSE, reason="x", now=NOW
            )
        assert _rollout_state(conn, rid) == RolloutState.HALTED.value


def test_lookup_names_the_allowed_events() -> None:
    """The error for an illegal move lists what the state allows (or that it is final)."""
    with pytest.raises(IllegalTransitionError, match="allowed: halt, supersede"):
        next_rollout_state(RolloutState.COMPLETED, RolloutEvent.RESUME)
    with pytest.raises(IllegalTransitionError, match="allowed: override"):
        next_device_state(DeviceState.ROLLED_BACK, DeviceEvent.RETRY)
    with pytest.raises(IllegalTransitionError, match="final state"):
        next_device_state(DeviceState.CANCELLED, DeviceEvent.OFFER)


def test_every_state_is_reachable_and_every_event_used() -> None:
    """No state or event in the enums is dead: each appears in its table."""
    rollout_states = {s for s, _ in ROLLOUT_TRANSITIONS} | set(ROLLOUT_TRANSITIONS.values())
    device_states = {s for s, _ in DEVICE_TRANSITIONS} | set(DEVICE_TRANSITIONS.values())
    assert rollout_states == set(RolloutState)
    assert device_states == set(DeviceState)
    assert {e for _, e in ROLLOUT_TRANSITIONS} == set(RolloutEvent)
    assert {e for _, e in DEVICE_TRANSITIONS} == set(DeviceEvent)


def test_docs_show_the_tables_of_the_code() -> None:
    """docs/rollouts.md holds the tables exactly as render_tables prints them."""
    page = (ROOT / "docs" / "rollouts.md").read_text()
    section = page.split("<!-- transitions:begin -->\n", 1)[1].split("<!-- transitions:end -->")[0]
    assert section == "\n" + render_tables() + "\n", "run scripts/rollout-tables"
