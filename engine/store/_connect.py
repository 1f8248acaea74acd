"""Creating the SQLAlchemy engine: SQLite pragmas, PostgreSQL session settings."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url

from engine.errors import StoreError

__all__ = [
    "CHECKIN_BUSY_TIMEOUT_MS",
    "PG_CONNECT_TIMEOUT_S",
    "PG_STATEMENT_TIMEOUT_MS",
    "checkin_session",
    "create_store_engine",
    "durable_write_connection",
    "write_connection",
]

#: Execution option asking the SQLite "begin" hook for BEGIN IMMEDIATE.
_IMMEDIATE = "engine_store_write"

#: How long a SQLite writer waits for another writer before failing (ms).
SQLITE_BUSY_TIMEOUT_MS = 15_000
#: How long a check-in waits for a lock (SQLite's write lock, a PostgreSQL row lock) (ms).
CHECKIN_BUSY_TIMEOUT_MS = 2_000
#: Seconds to wait for a PostgreSQL connection to open.
PG_CONNECT_TIMEOUT_S = 5
#: Longest a PostgreSQL statement may run (ms); a check-in's are far shorter.
PG_STATEMENT_TIMEOUT_MS = 60_000
#: Longest a check-in's statement may run on PostgreSQL (ms).
PG_CHECKIN_STATEMENT_TIMEOUT_MS = 10_000
#: Connections each process keeps (and may add) in its PostgreSQL pool: the check-in
#: thread and the report flusher hold one each, the controller one or two, the rest
#: serve operator and device routes from the thread pool.
PG_POOL_SIZE = 6
PG_MAX_OVERFLOW = 6


def create_store_engine(url: str) -> Engine:
    """An Engine for ``url`` (already normalised) with the store's connection settings.

    SQLite: the database's directory is created; every connection runs in WAL
    mode with synchronous=NORMAL, a busy timeout and foreign keys on, and
    transactions are begun explicitly (deferred for reads, immediate for
    ``write_connection``). PostgreSQL: sessions use UTC, connections are
    checked before use, connecting times out after ``PG_CONNECT_TIMEOUT_S``
    and statements after ``PG_STATEMENT_TIMEOUT_MS``; each process pools at
    most ``PG_POOL_SIZE + PG_MAX_OVERFLOW`` connections. Raises StoreError
    when the SQLite directory cannot be made.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            directory = Path(database).parent
            try:
                directory.mkdir(parents=True, exist_ok=True)
                _create_private(Path(database))
            except OSError as e:
                raise StoreError(
                    f"cannot open the store {url}: cannot create {directory}: {e.strerror}"
                ) from e
        engine = create_engine(url)
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=PG_POOL_SIZE,
        max_overflow=PG_MAX_OVERFLOW,
        pool_timeout=10,
        connect_args={
            "options": f"-c timezone=UTC -c statement_timeout={PG_STATEMENT_TIMEOUT_MS}",
            "application_name": "engine",
            "connect_timeout": PG_CONNECT_TIMEOUT_S,
        },
    )


def _create_private(path: Path) -> None:
    """Create the database file readable by its owner only (SQLite gives its -wal and -shm
    files the same mode); an existing file is left as it is."""
    with suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def checkin_session(conn: Connection, *, durable: bool) -> None:
    """Set up a connection kept for check-ins: short lock waits and statement timeouts.

    ``durable``: its commits reach the disk before returning (SQLite
    ``synchronous=FULL``), for rollout state transitions.
    """
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SET statement_timeout = {PG_CHECKIN_STATEMENT_TIMEOUT_MS}")
        conn.exec_driver_sql(f"SET lock_timeout = {CHECKIN_BUSY_TIMEOUT_MS}")
        conn.commit()
        return
    # Straight to the driver (in autocommit mode): outside any transaction.
    driver: Any = conn.connection.driver_connection
    driver.execute(f"PRAGMA busy_timeout = {CHECKIN_BUSY_TIMEOUT_MS}")
    driver.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Take BEGIN away from pysqlite so that we choose DEFERRED or IMMEDIATE.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        _enable_wal(cursor)
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _enable_wal(cursor: Any) -> None:
    """Put the database in WAL mode (kept in the file: the first connection sets it).

    Changing the journal mode fails at once with "database is locked" while another
    connection holds the write lock, without waiting on the busy timeout: several
    processes opening a new store together (a migration holds that lock) retry here
    for as long as the busy timeout would have waited.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() >= deadline:
                raise
            time.sleep(0.02)


def _sqlite_begin(conn: Connection) -> None:
    # A write transaction takes the write lock up front: a deferred one that
    # later writes cannot wait for a busy lock in WAL mode and fails at once.
    immediate = conn.get_execution_options().get(_IMMEDIATE, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


@contextmanager
def write_connection(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction that will write: committed on success, else rolled back.

    On SQLite the transaction holds the database's write lock from its start.
    """
    with engine.connect() as conn:
        conn.execution_options(**{_IMMEDIATE: True})
        with conn.begin():
            yield conn


@contextmanager
def durable_write_connection(engine: Engine) -> Iterator[Connection]:
    """Like ``write_connection``, and its commit reaches the disk before returning.

    For rollout state changes. SQLite: ``synchronous=FULL`` for this
    transaction (the store runs NORMAL otherwise); PostgreSQL commits durably
    unless the server itself was configured not to.
    """
    with engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        driver: Any = conn.connection.driver_connection if sqlite else None
        if sqlite:
            driver.execute("PRAGMA synchronous = FULL")
        try:
            conn.execution_options(**{_IMMEDIATE: True})
            with conn.begin():
                yield conn
        finally:
            if sqlite:
                driver.execute("PRAGMA synchronous = NORMAL")
