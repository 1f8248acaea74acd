"""Fixtures shared by every test package.

Databases: ``store_url`` runs a test once on SQLite and once on a fresh
PostgreSQL database; ``postgres_url`` gives a fresh PostgreSQL database alone.
PostgreSQL is expected on 127.0.0.1:5432 (user postgres, trust auth; override
with $ENGINE_TEST_PG). Without it the PostgreSQL cases are skipped locally and
fail when $CI is "true", so CI cannot silently lose them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from hypothesis import settings
from psycopg import sql

from engine.store import Store
from tests.bundles import RuntimeBundle, build_runtime_bundle

# Property tests: the same examples on every run and in CI (fixed seed), no example database
# on disk, a bounded number of examples, no per-example deadline (the machine may be busy).
settings.register_profile("fleet", derandomize=True, database=None, max_examples=100, deadline=None)
settings.load_profile("fleet")

#: Admin connection to the test server (libpq keywords), its maintenance database.
PG_ADMIN_DSN = os.environ.get(
    "ENGINE_TEST_PG", "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=3"
)

_pg_unreachable: str | None = None
_pg_checked = False


def _pg_admin() -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(PG_ADMIN_DSN, autocommit=True)


def _require_postgres() -> None:
    global _pg_checked, _pg_unreachable  # noqa: PLW0603 - one probe per session
    if not _pg_checked:
        _pg_checked = True
        try:
            with _pg_admin() as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as e:
            _pg_unreachable = f"PostgreSQL unreachable at {PG_ADMIN_DSN!r}: {e}".strip()
    if _pg_unreachable is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{_pg_unreachable} (CI must run the PostgreSQL tests)")
        pytest.skip(_pg_unreachable)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """SQLAlchemy URL of a fresh, empty PostgreSQL database, dropped after the test."""
    _require_postgres()
    name = f"engine_test_{uuid.uuid4().hex[:16]}"
    with _pg_admin() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    info = psycopg.conninfo.conninfo_to_dict(PG_ADMIN_DSN)
    host, port, user = info.get("host", "127.0.0.1"), info.get("port", "5432"), info["user"]
    try:
        yield f"postgresql+psycopg://{user}@{host}:{port}/{name}"
    finally:
        with _pg_admin() as conn:
            # A leaked pool connection must not keep the database alive.
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """URL of an empty store: SQLite under tmp_path, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / '.engine' / 'state.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """An open, migrated store on each backend of ``store_url``."""
    with Store.open(store_url) as opened:
        yield opened


@pytest.fixture(scope="session")
def runtime_bundle(tmp_path_factory: pytest.TempPathFactory) -> RuntimeBundle:
    """A signed runtime bundle for this machine, built once per session (do not modify it:
    use ``runtime_bundle.copy_to``); skips locally without the wheelhouse of scripts/setup."""
    return build_runtime_bundle(tmp_path_factory.mktemp("runtime-bundle"))
