"""Applies ``engine.store.migrations`` in order, once, under a database lock."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import Column, Connection, Engine, Integer, MetaData, String, Table, select

from engine.errors import StoreError
from engine.store._connect import write_connection
from engine.store._types import UTCDateTime
from engine.store._url import redact_url
from engine.store.migrations import MIGRATIONS, Migration

__all__ = ["check_schema", "migrate", "schema_version"]

#: Arbitrary constant naming the engine's migration lock in pg_advisory_xact_lock.
_PG_LOCK_KEY = 0x656E67696E65  # "engine"

_md = MetaData()
schema_migrations = Table(
    "schema_migrations",
    _md,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("name", String(200), nullable=False),
    Column("applied_at", UTCDateTime(), nullable=False),
)


def _applied(conn: Connection) -> dict[int, str]:
    if not conn.dialect.has_table(conn, "schema_migrations"):
        return {}
    rows = conn.execute(select(schema_migrations.c.version, schema_migrations.c.name))
    return {int(v): str(n) for v, n in rows}


def _check_history(url: str, applied: dict[int, str], migrations: Sequence[Migration]) -> None:
    known = {m.version: m.name for m in migrations}
    newest = max(applied, default=0)
    if newest > len(migrations):
        raise StoreError(
            f"the store {redact_url(url)} has schema version {newest}, newer than this "
            f"engine knows (up to {len(migrations)}); upgrade the engine before using it"
        )
    for version, name in sorted(applied.items()):
        if known.get(version) != name:
            raise StoreError(
                f"the store {redact_url(url)} recorded migration {version} as {name!r}, "
                f"but this engine's migration {version} is {known.get(version)!r}; the "
                "database was migrated by a different build of the engine"
            )


def schema_version(engine: Engine) -> int:
    """The highest migration applied to the database, 0 for an empty one."""
    with engine.connect() as conn:
        return max(_applied(conn), default=0)


def check_schema(engine: Engine, url: str, migrations: Sequence[Migration] = MIGRATIONS) -> None:
    """Raise StoreError unless the database is exactly at the code's schema version."""
    with engine.connect() as conn:
        applied = _applied(conn)
    _check_history(url, applied, migrations)
    current = max(applied, default=0)
    if current < len(migrations):
        raise StoreError(
            f"the store {redact_url(url)} has schema version {current}, this engine needs "
            f"{len(migrations)}; open it with migrations enabled to upgrade it"
        )


def migrate(engine: Engine, url: str, migrations: Sequence[Migration] = MIGRATIONS) -> list[int]:
    """Apply every pending migration, each in its own locked transaction.

    Returns the versions applied by this call (empty when another process did
    them first). Raises StoreError when the database is newer than the code or
    its history differs, and when a migration fails (that migration is rolled
    back; earlier ones stay).
    """
    for index, m in enumerate(migrations, start=1):
        if m.version != index:
            raise RuntimeError(f"migration {m.name!r} has version {m.version}, expected {index}")
    done: list[int] = []
    while True:
        with write_connection(engine) as conn:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_LOCK_KEY})")
            applied = _applied(conn)
            _check_history(url, applied, migrations)
            current = max(applied, default=0)
            if current >= len(migrations):
                return done
            step = migrations[current]
            _md.create_all(conn, tables=[schema_migrations], checkfirst=True)
            try:
                step.apply(conn)
            except Exception as e:
                raise StoreError(
                    f"migration {step.version} ({step.name}) of {redact_url(url)} failed: {e}"
                ) from e
            conn.execute(
                schema_migrations.insert().values(
                    version=step.version, name=step.name, applied_at=datetime.now(UTC)
                )
            )
            done.append(step.version)
