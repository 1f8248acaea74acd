"""The shared PostgreSQL fixtures: skipped locally without a server, failed in CI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PG_CASE = "tests/store/test_reports.py::test_digest_of_empty_store[postgresql]"


def _run_pg_case(ci: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    # Port 1 on loopback: nothing listens there, so the connection is refused at once.
    env["ENGINE_TEST_PG"] = "host=127.0.0.1 port=1 user=postgres dbname=postgres connect_timeout=2"
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", PG_CASE],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
def test_unreachable_postgres_skips_locally() -> None:
    """Without PostgreSQL and without CI=true, PostgreSQL cases are skipped with the reason."""
    done = _run_pg_case(None)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 skipped" in done.stdout
    assert "PostgreSQL unreachable" in done.stdout


@pytest.mark.slow
def test_unreachable_postgres_fails_in_ci() -> None:
    """With CI=true an unreachable PostgreSQL fails the PostgreSQL cases instead of skipping."""
    done = _run_pg_case("true")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "CI must run the PostgreSQL tests" in done.stdout
    assert "skipped" not in done.stdout


def test_postgres_url_is_a_fresh_database(postgres_url: str) -> None:
    """postgres_url names an empty, uniquely named database that accepts connections."""
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(postgres_url)
    assert url.drivername == "postgresql+psycopg"
    assert url.database is not None and url.database.startswith("engine_test_")
    with psycopg.connect(
        host=url.host, port=url.port, user=url.username, dbname=url.database
    ) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
    assert tables == (0,)
