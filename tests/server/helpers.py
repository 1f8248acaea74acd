"""What tests of the server read from its store directly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import text

from engine.store import Store
from tests.harness import wait_until

TABLES = ("devices", "reports", "heartbeats", "events")

CHECKIN = {
    "platform": "linux",
    "agent_version": "3.0.0",
    "known_good": "3.0.0",
    "runtime_version": "0.1.0",
    "agent_running": True,
    "transaction": {"target": "3.0.1", "phase": "commit", "result": "committed", "attempts": 2},
}


def sqlite_url(repo: Path) -> str:
    """The default store of an operator repo."""
    return f"sqlite:///{repo / '.engine' / 'state.db'}"


def snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the server's device tables, sorted: compare before and after a refusal."""
    with Store.open(url, migrate=False) as store, store.read() as conn:
        return {
            t: sorted(tuple(r) for r in conn.execute(text(f"SELECT * FROM {t}"))) for t in TABLES
        }


def stored_reports(url: str, count: int = 1) -> list[tuple[Any, ...]]:
    """The reports table once it holds ``count`` rows (check-ins write reports behind)."""
    rows: list[tuple[Any, ...]] = []

    def enough() -> bool:
        rows[:] = snapshot(url)["reports"]
        return len(rows) >= count

    wait_until(f"{count} stored reports", enough, timeout=30, interval=0.05)
    return rows


def bearer(token: str) -> dict[str, str]:
    """Authorization header for a token."""
    return {"Authorization": f"Bearer {token}"}
