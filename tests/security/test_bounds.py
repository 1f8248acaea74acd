"""Out-of-range values and store failures: 422 naming the field, 404, 503 — never a 500."""

from __future__ import annotations

import re
import stat
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql

from tests.conftest import _pg_admin
from tests.server.conftest import ServerHandle, copy_fleet, running_server
from tests.server.helpers import CHECKIN, bearer

DEVICE = "berlin-pos-0001"
HUGE = 2**70

#: (path under the device, body, the field the 422 must name)
OUT_OF_RANGE: list[tuple[str, dict[str, Any], str]] = [
    ("heartbeat", {"version": "3.0.1", "at": "2026-01-01T00:00:00Z", "pid": HUGE}, "pid"),
    ("heartbeat", {"version": "3.0.1", "at": "2026-01-01T00:00:00Z", "pid": -1}, "pid"),
    ("heartbeat", {"version": "3.0.1", "at": "0001-01-01T00:00:00+01:00"}, "at"),
    ("heartbeat", {"version": "3.0.1", "at": "9999-12-31T23:59:59-01:00"}, "at"),
    ("heartbeat", {"version": "3.0.1", "at": "9999-12-31T00:00:00Z"}, "at"),
    (
        "checkin",
        {**CHECKIN, "transaction": {"result": "failed", "attempts": HUGE}},
        "transaction.attempts",
    ),
    (
        "checkin",
        {**CHECKIN, "transaction": {"result": "failed", "finished_at": "0001-01-01T00:30+01:00"}},
        "transaction.finished_at",
    ),
    (
        "events",
        {"events": [{"target": "3.0.1", "step": "x" * 51, "status": "ok", "at": "2026-01-01"}]},
        "events.0.step",
    ),
    (
        "events",
        {
            "events": [
                {"target": "3.0.1", "step": "swap", "status": "ok", "at": "0001-01-01T00:00-05:00"}
            ]
        },
        "events.0.at",
    ),
]


@pytest.fixture
def served(tmp_path: Path) -> Any:
    """`engine serve` on the example fleet (SQLite) and one enrolled device's token."""
    repo = copy_fleet(tmp_path / "fleet")
    with running_server(repo) as server:
        yield server, server.enroll(DEVICE)


@pytest.mark.parametrize(("path", "body", "field"), OUT_OF_RANGE)
def test_out_of_range_values_are_422_naming_the_field(
    served: tuple[ServerHandle, str], path: str, body: dict[str, Any], field: str
) -> None:
    """Integers past 32 bits, instants outside 1970..9000 (UTC) and long steps are refused
    with 422 naming the field; the store never sees them."""
    server, token = served
    with server.client() as c:
        r = c.post(f"/v1/devices/{DEVICE}/{path}", json=body, headers=bearer(token))
    assert r.status_code == 422, r.text
    assert re.search(rf"(?:: |; ){re.escape(field)}[.:]", r.json()["detail"]), r.text


@pytest.mark.parametrize("reference", ["²", "①", "٣", str(2**64), "1" * 400, "a%00b"])
def test_odd_rollout_references_are_404(served: tuple[ServerHandle, str], reference: str) -> None:
    """Rollout references that are digits only to str.isdigit, or too big, are not found."""
    server, _ = served
    with server.client(headers=server.admin_headers()) as c:
        assert c.get(f"/v1/admin/rollouts/{reference}").status_code == 404
        assert c.post(f"/v1/admin/rollouts/{reference}/pause").status_code == 404


def test_state_db_is_private(served: tuple[ServerHandle, str]) -> None:
    """The SQLite store (tokens' hashes, reports) is created readable by its owner only."""
    server, _ = served
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        path = server.repo / ".engine" / name
        if path.exists() or name == "state.db":
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, name


@pytest.mark.postgres
def test_store_failures_answer_503_on_every_route(tmp_path: Path, postgres_url: str) -> None:
    """With PostgreSQL refusing connections, enrollment, operator, release and field routes
    answer 503 with Retry-After (or serve from memory), never 500."""
    repo = copy_fleet(tmp_path / "fleet", settings='field_release: "3.0.1"')
    database = postgres_url.rsplit("/", 1)[1]
    with running_server(repo, state_url=postgres_url) as server:
        token = server.enroll(DEVICE)
        with _pg_admin() as conn:
            conn.execute(
                sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(
                    sql.Identifier(database)
                )
            )
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (database,),
            )
        try:
            with server.client() as c:
                enroll = {
                    "device": "munich-mac-0003",
                    "platform": "macos",
                    "enrollment_secret": server.enrollment_secret,
                }
                must_503 = [
                    c.post("/v1/enroll", json=enroll),
                    c.get("/v1/admin/devices", headers=server.admin_headers()),
                    c.get("/v1/admin/status", headers=server.admin_headers()),
                    c.get("/v1/admin/rollouts", headers=server.admin_headers()),
                    c.post(
                        "/v1/admin/devices/hamburg-srv-0002/revoke", headers=server.admin_headers()
                    ),
                    c.post(f"/v1/devices/{DEVICE}/checkin", json=CHECKIN, headers=bearer(token)),
                ]
                others = [
                    c.get("/v1/releases"),
                    c.get("/diags/persistentagentversion"),
                    c.get("/v1/releases/3.0.1/manifest"),
                ]
            for r in must_503:
                assert r.status_code == 503, (r.request.url, r.status_code, r.text)
                assert r.headers["Retry-After"] == "5"
            for r in others:
                assert r.status_code in (200, 503), (r.request.url, r.status_code, r.text)
        finally:
            with _pg_admin() as conn:
                conn.execute(
                    sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(
                        sql.Identifier(database)
                    )
                )
