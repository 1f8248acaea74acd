"""The check-in's database path: off the event loop, no write lock before the token check,
reports written behind and flushed on shutdown, bounded waits for locks."""

from __future__ import annotations

import os
import signal
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from engine.server._checkin_db import CheckinDatabase
from engine.store import Store
from engine.store._connect import (
    CHECKIN_BUSY_TIMEOUT_MS,
    PG_CHECKIN_STATEMENT_TIMEOUT_MS,
    checkin_session,
)
from tests.server.conftest import copy_fleet, running_server
from tests.server.helpers import CHECKIN, bearer, snapshot, sqlite_url, stored_reports

A = "berlin-pos-0001"
B = "hamburg-srv-0002"


def test_locked_sqlite_stalls_no_request(tmp_path: Path) -> None:
    """While another connection holds SQLite's write lock, a bogus-token check-in is refused
    (401, not 503 after a busy wait), a good check-in and /healthz are answered."""
    repo = copy_fleet(tmp_path / "fleet")
    with running_server(repo) as server:
        good = server.enroll(A, "linux")
        server.enroll(B, "linux")  # enrolled, its token not cached by the server
        holder = sqlite3.connect(repo / ".engine" / "state.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # the write lock, held until released below
        try:
            with httpx.Client(base_url=server.url, timeout=60) as c, ThreadPoolExecutor(3) as pool:
                bogus = pool.submit(
                    c.post, f"/v1/devices/{B}/checkin", json=CHECKIN, headers=bearer("x" * 43)
                )
                checkin = pool.submit(
                    c.post, f"/v1/devices/{A}/checkin", json=CHECKIN, headers=bearer(good)
                )
                health = pool.submit(c.get, "/healthz")
                answers = (bogus.result(), checkin.result(), health.result())
            # Still locked: nothing could be written, and yet every request was answered.
            assert holder.in_transaction
        finally:
            holder.rollback()
            holder.close()
        assert [r.status_code for r in answers] == [401, 200, 200], [r.text for r in answers]
        assert answers[1].json()["plan"] is None
        # The report was kept while the store was locked and is written once it is free.
        (report,) = stored_reports(sqlite_url(repo))
        assert report[:2] == (A, "3.0.0")


def test_buffered_reports_are_written_on_shutdown(tmp_path: Path) -> None:
    """With a long write-behind window a report waits in memory; SIGTERM writes it."""
    repo = copy_fleet(tmp_path / "fleet")
    with running_server(repo, env={"ENGINE_REPORT_FLUSH_SECONDS": "3600"}) as server:
        token = server.enroll(A, "linux")
        with server.client() as c:
            r = c.post(f"/v1/devices/{A}/checkin", json=CHECKIN, headers=bearer(token))
        assert r.status_code == 200, r.text
        assert snapshot(sqlite_url(repo))["reports"] == []  # still buffered
        os.killpg(server.process.pid, signal.SIGTERM)
        assert server.process.wait(timeout=60) == 0, server.log()
    (report,) = snapshot(sqlite_url(repo))["reports"]
    assert report[:2] == (A, "3.0.0")


def test_bad_flush_window_is_refused(tmp_path: Path) -> None:
    """A report flush window that is not 0 to 3600 seconds stops `engine serve` with a message."""
    repo = copy_fleet(tmp_path / "fleet")
    bad = {"ENGINE_REPORT_FLUSH_SECONDS": "-1"}
    with (
        pytest.raises(AssertionError, match="ENGINE_REPORT_FLUSH_SECONDS='-1'"),
        running_server(repo, env=bad),
    ):
        pass


def test_checkin_sessions_wait_for_locks_briefly(store: Store) -> None:
    """Check-in connections wait at most CHECKIN_BUSY_TIMEOUT_MS for a lock, and PostgreSQL
    ones stop a statement after PG_CHECKIN_STATEMENT_TIMEOUT_MS; other sessions have a
    statement timeout too."""
    with store.engine.connect() as conn:
        checkin_session(conn, durable=True)
        if conn.dialect.name == "sqlite":
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == CHECKIN_BUSY_TIMEOUT_MS
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        else:
            assert conn.exec_driver_sql("SHOW lock_timeout").scalar() == "2s"
            statement = conn.exec_driver_sql("SHOW statement_timeout").scalar()
            assert statement == f"{PG_CHECKIN_STATEMENT_TIMEOUT_MS // 1000}s"
        conn.invalidate()  # never back to the pool with the check-in settings
    if store.engine.dialect.name == "postgresql":
        with store.read() as conn:
            assert conn.execute(text("SHOW statement_timeout")).scalar() == "1min"


def test_closed_checkin_database_flushes_what_it_buffered(store: Store) -> None:
    """``close`` with nothing buffered and no thread started does nothing and raises nothing."""
    from engine.server._auth import DeviceTokens
    from engine.server._device_db import DeviceSql

    db = CheckinDatabase(store, DeviceSql(store.engine.dialect.name), DeviceTokens(lambda d: None))
    db.close()
    with store.read() as conn:
        assert conn.execute(text("SELECT count(*) FROM reports")).scalar() == 0
