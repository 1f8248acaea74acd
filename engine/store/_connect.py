"""Creating the SQLAlchemy engine: SQLite pragmas, PostgreSQL session settings."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url

from engine.errors import StoreError

__all__ = ["create_store_engine", "write_connection"]

#: Execution option asking the SQLite "begin" hook for BEGIN IMMEDIATE.
_IMMEDIATE = "engine_store_write"

#: How long a SQLite writer waits for another writer before failing (ms).
SQLITE_BUSY_TIMEOUT_MS = 15_000


def create_store_engine(url: str) -> Engine:
    """An Engine for ``url`` (already normalised) with the store's connection settings.

    SQLite: the database's directory is created; every connection runs in WAL
    mode with synchronous=NORMAL, a busy timeout and foreign keys on, and
    transactions are begun explicitly (deferred for reads, immediate for
    ``write_connection``). PostgreSQL: sessions use UTC, connections are
    checked before use. Raises StoreError when the SQLite directory cannot be made.
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
        connect_args={"options": "-c timezone=UTC", "application_name": "engine"},
    )


def _create_private(path: Path) -> None:
    """Create the database file readable by its owner only (SQLite gives its -wal and -shm
    files the same mode); an existing file is left as it is."""
    with suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Take BEGIN away from pysqlite so that we choose DEFERRED or IMMEDIATE.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


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
