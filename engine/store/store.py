"""The engine's store: one object owning the database connection pool."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Self

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from engine.errors import StoreError
from engine.instruments import store_failed
from engine.store import _reports
from engine.store._connect import create_store_engine, write_connection
from engine.store._migrate import check_schema, migrate, schema_version
from engine.store._reports import ReportDigest, UpsertCounts
from engine.store._url import normalize_url, redact_url
from states.report import Report

__all__ = ["Store"]


class Store:
    """Durable engine state (reports, and later rollouts, devices, events) in SQL.

    Open with ``Store.open(url)``; use as a context manager or call ``close``.
    Other modules add queries as functions taking a ``Connection`` from
    ``read()`` / ``write()``; the methods here are the common ones.
    """

    def __init__(self, url: str, engine: Engine) -> None:
        """Wrap an engine already set up by ``Store.open``; prefer ``Store.open``."""
        self.url = url
        self.engine = engine

    @classmethod
    def open(cls, url: str, *, migrate: bool = True) -> Store:
        """Connect to the store at ``url``, migrating its schema to this code's version.

        With ``migrate=False`` the schema must already be current. Raises
        StoreError when the database cannot be reached, its schema is newer
        than the code (or older, without ``migrate``), or a migration fails.
        """
        url = normalize_url(url)
        engine = create_store_engine(url)
        try:
            if migrate:
                _migrate_schema(engine, url)
            else:
                check_schema(engine, url)
        except StoreError:
            engine.dispose()
            raise
        except SQLAlchemyError as e:
            engine.dispose()
            raise StoreError(f"cannot open the store {redact_url(url)}: {_reason(e)}") from e
        return cls(url, engine)

    @property
    def display_url(self) -> str:
        """The URL with any password hidden, for messages."""
        return redact_url(self.url)

    def schema_version(self) -> int:
        """The schema version the database is at."""
        return schema_version(self.engine)

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection in a read transaction (a consistent snapshot)."""
        try:
            with self.engine.connect() as conn, conn.begin():
                yield conn
        except SQLAlchemyError as e:
            store_failed("read")
            raise StoreError(f"reading {self.display_url} failed: {_reason(e)}") from e

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A connection in a write transaction: committed when the block ends, else rolled back."""
        try:
            with write_connection(self.engine) as conn:
                yield conn
        except SQLAlchemyError as e:
            store_failed("write")
            raise StoreError(f"writing {self.display_url} failed: {_reason(e)}") from e

    def analyze(self, tables: Iterable[str]) -> None:
        """Refresh PostgreSQL's planner statistics of ``tables`` after a large write (nothing
        on SQLite). Raises StoreError."""
        if self.engine.dialect.name != "postgresql":
            return
        with self.write() as conn:
            for table in tables:
                conn.exec_driver_sql(f'ANALYZE "{table}"')

    def upsert_reports(self, reports: Iterable[Report]) -> int:
        """Store device reports in one transaction; returns how many rows were written.

        A report older than the one stored for its device is skipped (see
        ``import_reports`` for the counts). Raises StoreError.
        """
        return self.import_reports(reports).written

    def import_reports(self, reports: Iterable[Report]) -> UpsertCounts:
        """Like ``upsert_reports``, returning how many were new, updated, or older than stored."""
        with self.write() as conn:
            return _reports.upsert(conn, reports)

    def load_reports(self) -> dict[str, Report]:
        """Every stored report, by device id. Raises StoreError."""
        with self.read() as conn:
            return _reports.load(conn)

    def get_report(self, device: str) -> Report | None:
        """The stored report of one device, or None. Raises StoreError."""
        with self.read() as conn:
            return _reports.load_one(conn, device)

    def reports_digest(self) -> ReportDigest:
        """(count, sha256 over sorted (device, agent_version, last_seen), latest last_seen).

        Equal to ``digest_reports(load_reports().values())``; saved plans use it
        to notice that reports changed since they were computed.
        """
        with self.read() as conn:
            return _reports.digest(conn)

    def load_reports_with_digest(self) -> tuple[dict[str, Report], ReportDigest]:
        """``load_reports()`` and ``reports_digest()`` of one snapshot, in one transaction.

        Raises StoreError.
        """
        with self.read() as conn:
            return _reports.load_with_digest(conn)

    def close(self) -> None:
        """Release every pooled connection."""
        self.engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _migrate_schema(engine: Engine, url: str) -> None:
    migrate(engine, url)


def _reason(e: SQLAlchemyError) -> str:
    # The driver's own message, without SQLAlchemy's SQL echo and help links.
    orig = getattr(e, "orig", None)
    return str(orig if orig is not None else e).strip().splitlines()[0]
