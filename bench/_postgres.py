"""A throwaway PostgreSQL database for the store benchmarks."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql


@contextmanager
def temporary_database(address: str) -> Iterator[str | None]:
    """A fresh database's URL on ``address`` (HOST:PORT, user postgres), dropped afterwards;
    None, with a note printed, when the server cannot be reached."""
    host, _, port = address.partition(":")
    admin = f"host={host} port={port or 5432} user=postgres dbname=postgres connect_timeout=3"
    name = f"engine_bench_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.Error as e:
        print(f"postgresql: skipped, cannot reach {address}: {e}")
        yield None
        return
    try:
        yield f"postgresql://postgres@{host}:{port or 5432}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
