"""A device's adoption (how its runtime took over the agent it found, CheckinRequest.adoption)
is recorded by a real `engine serve` on SQLite and PostgreSQL, kept across check-ins that
do not repeat it, replaced by a new one, and shown by /v1/admin/devices and
`engine devices list`."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

from engine.cli import main as engine_main
from tests.server.conftest import ServerHandle, running_server

DEVICE = "hamburg-srv-0002"
BACKED_UP = "the files in /opt/Wegweiser/Agent match none of 4 signed releases; 2 backed up to "
BACKED_UP += "/var/lib/agent-runtime/adopt-backup/20261201T120000Z"


def _checkin(server: ServerHandle, token: str, adoption: dict[str, Any] | None) -> None:
    body: dict[str, Any] = {"platform": "linux", "agent_version": "3.0.0"}
    if adoption is not None:
        body["adoption"] = adoption
    with server.client() as c:
        r = c.post(f"/v1/devices/{DEVICE}/checkin", json=body,
                   headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    assert r.status_code == 200, r.text


def _shown(server: ServerHandle) -> Any:
    with server.client() as c:
        rows = c.get("/v1/admin/devices", headers=server.admin_headers()).json()
    return next(r for r in rows if r["device"] == DEVICE)["adoption"]


def _listed(repo: Path, store_url: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert engine_main(["devices", "list", "-C", str(repo), "--state", store_url]) == 0
    lines = out.getvalue().splitlines()
    header = lines[0].split()
    row = next(line.split() for line in lines[1:] if line.startswith(DEVICE))
    return row[header.index("ADOPTED")]


def test_adoption_is_recorded_kept_and_replaced(fleet: Path, store_url: str) -> None:
    """`unknown` with the backup's place is shown as sent; a check-in without an adoption
    keeps it; a later `known 3.0.1` replaces it (version and all)."""
    # Reports written before each answer (no write-behind): read back at once.
    at_once = {"ENGINE_REPORT_FLUSH_SECONDS": "0"}
    with running_server(fleet, store_url, env=at_once) as server:
        token = server.enroll(DEVICE)
        _checkin(server, token, None)
        assert _shown(server) is None and _listed(fleet, store_url) == "-"

        _checkin(server, token, {"status": "unknown", "detail": BACKED_UP})
        expected = {"status": "unknown", "version": None, "detail": BACKED_UP}
        assert _shown(server) == expected
        assert _listed(fleet, store_url) == "unknown"

        _checkin(server, token, None)
        assert _shown(server) == expected

        known = {"status": "known", "version": "3.0.1", "detail": "the 3 files are 3.0.1"}
        _checkin(server, token, known)
        assert _shown(server) == known
        assert _listed(fleet, store_url) == "3.0.1"
