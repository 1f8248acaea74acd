"""Ordered schema migrations: the history of every table in ``engine.store.schema``.

To change the schema:

1. change or add the table in ``engine/store/schema.py`` (what queries use);
2. write a function ``_NNNN_what(conn)`` below that brings a database at the
   previous version to the new shape, with its own table definitions (never
   import ``schema`` here: a migration must keep doing what it did when it
   was written, whatever ``schema.py`` says later);
3. append ``Migration(NNNN, "what", _NNNN_what)`` to ``MIGRATIONS``.

Each migration runs in its own transaction under a database-wide lock
(``pg_advisory_xact_lock`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), so
concurrent ``engine serve`` replicas apply it exactly once; the runner records
it in ``schema_migrations``. Never edit or reorder a migration that was
released: add a new one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import (
    Column,
    Connection,
    Index,
    Integer,
    MetaData,
    String,
    Table,
)

from engine.store._types import UTCDateTime

__all__ = ["MIGRATIONS", "Migration"]


@dataclass(frozen=True)
class Migration:
    """One step of the schema's history: version ``version`` is reached by ``apply``."""

    version: int
    name: str
    apply: Callable[[Connection], None]


def _0001_reports(conn: Connection) -> None:
    md = MetaData()
    Table(
        "reports",
        md,
        Column("device", String(200), primary_key=True),
        Column("agent_version", String(100), nullable=True),
        Column("platform", String(16), nullable=True),
        Column("last_seen", UTCDateTime(), nullable=False),
        Column("runtime_version", String(100), nullable=True),
        Column("known_good", String(100), nullable=True),
        Column("last_result", String(200), nullable=True),
        Column("updated_at", UTCDateTime(), nullable=False),
        Index("ix_reports_last_seen", "last_seen"),
    )
    md.create_all(conn)


def _0002_devices(conn: Connection) -> None:
    md = MetaData()
    Table(
        "devices",
        md,
        Column("device", String(200), primary_key=True),
        Column("platform", String(16), nullable=False),
        Column("token_hash", String(64), nullable=False),
        Column("enrolled_at", UTCDateTime(), nullable=False),
        Column("revoked_at", UTCDateTime(), nullable=True),
        Column("runtime_version", String(100), nullable=True),
        Column("enrollments", Integer, nullable=False),
    )
    Table(
        "heartbeats",
        md,
        Column("device", String(200), primary_key=True),
        Column("version", String(100), nullable=False),
        Column("at", UTCDateTime(), nullable=False),
        Column("pid", Integer, nullable=True),
        Column("received_at", UTCDateTime(), nullable=False),
    )
    Table(
        "events",
        md,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("device", String(200), nullable=False),
        Column("target", String(100), nullable=False),
        Column("step", String(50), nullable=False),
        Column("status", String(50), nullable=False),
        Column("detail", String(2000), nullable=True),
        Column("at", UTCDateTime(), nullable=False),
        Column("received_at", UTCDateTime(), nullable=False),
        Index("ix_events_device_id", "device", "id"),
    )
    md.create_all(conn)
    # What the device said about its last transaction, beside its report.
    for column in (
        "tx_target VARCHAR(100)",
        "tx_phase VARCHAR(50)",
        "tx_attempts INTEGER",
        "tx_detail VARCHAR(2000)",
        "agent_running BOOLEAN",
    ):
        conn.exec_driver_sql(f"ALTER TABLE reports ADD COLUMN {column}")


#: Every migration, oldest first; versions are 1, 2, 3, ... without gaps.
MIGRATIONS: list[Migration] = [
    Migration(1, "reports", _0001_reports),
    Migration(2, "devices, heartbeats, events", _0002_devices),
]
