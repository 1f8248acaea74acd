"""Schema migrations: from empty, idempotent re-open, refusal of newer schemas, locking."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, inspect, text

from engine.store import Store, StoreError, normalize_url
from engine.store._connect import create_store_engine
from engine.store._migrate import migrate, schema_version
from engine.store.migrations import MIGRATIONS, Migration
from engine.store.schema import metadata


def _tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


def _history(engine: Engine) -> list[tuple[int, str]]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT version, name FROM schema_migrations ORDER BY version"))
        return [(int(v), str(n)) for v, n in rows]


def test_migration_list_is_contiguous() -> None:
    """Migration versions run 1..N without gaps and names are unique."""
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    assert len({m.name for m in MIGRATIONS}) == len(MIGRATIONS)


def test_open_empty_database_migrates_to_latest(store_url: str) -> None:
    """Opening an empty database creates every table and records every migration."""
    with Store.open(store_url) as store:
        assert store.schema_version() == len(MIGRATIONS)
        assert _history(store.engine) == [(m.version, m.name) for m in MIGRATIONS]
        assert set(metadata.tables) <= _tables(store.engine)


def test_migrations_produce_schema_py(store_url: str) -> None:
    """The migrated database has exactly the columns and nullability schema.py declares."""
    with Store.open(store_url) as store:
        inspector = inspect(store.engine)
        for name, table in metadata.tables.items():
            columns = {c["name"]: c["nullable"] for c in inspector.get_columns(name)}
            declared = {c.name: c.nullable for c in table.columns}
            assert columns == declared, name
            indexes = {i["name"] for i in inspector.get_indexes(name)}
            assert {i.name for i in table.indexes} <= indexes, name


def test_reopen_is_idempotent(store_url: str) -> None:
    """Opening a current store again applies nothing and keeps its data."""
    with Store.open(store_url) as store:
        with store.write() as conn:
            conn.execute(
                text(
                    "INSERT INTO reports (device, last_seen, updated_at) "
                    "VALUES ('d1', '2026-01-01T00:00:00.000000+00:00', "
                    "'2026-01-01T00:00:00.000000+00:00')"
                )
            )
        before = _history(store.engine)
    with Store.open(store_url) as store:
        assert _history(store.engine) == before
        assert migrate(store.engine, store.url) == []
        assert list(store.load_reports()) == ["d1"]


def test_newer_schema_is_refused(store_url: str) -> None:
    """A database migrated by a newer engine is refused with a clear error, untouched."""
    with Store.open(store_url) as store, store.write() as conn:
        conn.execute(
            text(
                "INSERT INTO schema_migrations (version, name, applied_at) "
                "VALUES (:v, 'from_the_future', '2026-01-01T00:00:00.000000+00:00')"
            ),
            {"v": len(MIGRATIONS) + 1},
        )
    for migrate_on_open in (True, False):
        with pytest.raises(StoreError) as info:
            Store.open(store_url, migrate=migrate_on_open)
        message = str(info.value)
        assert f"schema version {len(MIGRATIONS) + 1}, newer than this engine" in message
        assert "upgrade the engine" in message
    engine = create_store_engine(normalize_url(store_url))
    try:
        assert schema_version(engine) == len(MIGRATIONS) + 1
    finally:
        engine.dispose()


def test_open_without_migrate_refuses_old_schema(store_url: str) -> None:
    """migrate=False on an empty database raises instead of creating tables."""
    with pytest.raises(StoreError, match="schema version 0, this engine needs"):
        Store.open(store_url, migrate=False)
    engine = create_store_engine(normalize_url(store_url))
    try:
        assert _tables(engine) == set()
    finally:
        engine.dispose()


def test_failed_migration_rolls_back_only_itself(store_url: str) -> None:
    """A failing migration leaves earlier ones applied and nothing of itself behind."""

    def create_a(conn: Connection) -> None:
        conn.execute(text("CREATE TABLE a (x INTEGER)"))

    def create_b_then_fail(conn: Connection) -> None:
        conn.execute(text("CREATE TABLE b (x INTEGER)"))
        raise ValueError("boom")

    steps = [Migration(1, "a", create_a), Migration(2, "b", create_b_then_fail)]
    url = normalize_url(store_url)
    engine = create_store_engine(url)
    try:
        with pytest.raises(StoreError, match=r"migration 2 \(b\) of .* failed: boom"):
            migrate(engine, url, steps)
        assert _tables(engine) == {"a", "schema_migrations"}
        assert _history(engine) == [(1, "a")]
    finally:
        engine.dispose()


def test_different_history_is_refused(store_url: str) -> None:
    """A database whose recorded migration names differ from the code's is refused."""
    url = normalize_url(store_url)
    engine = create_store_engine(url)
    try:
        migrate(engine, url, [Migration(1, "other", lambda conn: None)])
        with pytest.raises(StoreError, match="recorded migration 1 as 'other'"):
            migrate(engine, url)
        assert _history(engine) == [(1, "other")]
    finally:
        engine.dispose()


def test_concurrent_openers_migrate_once(store_url: str) -> None:
    """Several processes' worth of openers racing on an empty database apply each migration once."""
    calls: list[int] = []
    lock = threading.Lock()

    def slow_create(conn: Connection) -> None:
        with lock:
            calls.append(1)
        time.sleep(0.2)  # widen the race window
        conn.execute(text("CREATE TABLE raced (x INTEGER)"))

    steps = [Migration(1, "raced", slow_create)]
    url = normalize_url(store_url)
    engines = [create_store_engine(url) for _ in range(4)]
    results: list[list[int]] = []
    errors: list[BaseException] = []

    def run(engine: Engine) -> None:
        try:
            results.append(migrate(engine, url, steps))
        except BaseException as e:  # collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(e,)) for e in engines]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert errors == []
        assert sorted(results) == [[], [], [], [1]]
        assert len(calls) == 1
        assert _history(engines[0]) == [(1, "raced")]
    finally:
        for e in engines:
            e.dispose()


def test_a_new_sqlite_store_opens_while_another_connection_holds_the_write_lock(
    tmp_path: Path,
) -> None:
    """Switching a new database to WAL fails at once while another connection holds the
    write lock (SQLite does not wait on the busy timeout there), as when processes open a
    new store together and one is migrating it: opening waits for the lock instead."""
    db = tmp_path / "state.db"
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE t (x INTEGER)")
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO t VALUES (1)")
    release = threading.Timer(0.5, lambda: holder.execute("COMMIT"))
    engine = create_store_engine(normalize_url(f"sqlite:///{db}"))
    try:
        release.start()
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("SELECT x FROM t").scalar() == 1  # after the COMMIT
    finally:
        release.join()
        engine.dispose()
        holder.close()


def test_sqlite_connections_use_wal_and_pragmas(tmp_path: Path) -> None:
    """Every SQLite connection runs in WAL mode with synchronous=NORMAL, busy timeout, FKs."""
    db = tmp_path / "deep" / "dir" / "state.db"
    with Store.open(f"sqlite:///{db}") as store:
        assert db.exists()
        with store.engine.connect() as conn:
            pragma = {
                name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
            }
    assert pragma == {
        "journal_mode": "wal",
        "synchronous": 1,
        "foreign_keys": 1,
        "busy_timeout": 15000,
    }


def test_unreachable_database_is_a_store_error(tmp_path: Path) -> None:
    """A database that cannot be opened raises StoreError naming the URL without password."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="cannot open the store sqlite"):
        Store.open(f"sqlite:///{blocker}/sub/state.db")
    with pytest.raises(StoreError) as info:
        Store.open("postgresql://postgres:pw@127.0.0.1:1/none?connect_timeout=2")
    assert "pw" not in str(info.value).replace("postgresql", "")
    assert "postgres:***@127.0.0.1:1" in str(info.value)
