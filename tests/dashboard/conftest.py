"""Fixtures of the dashboard and forensics tests: a store with a halted rollout, the app."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from engine.server import ServerSettings, create_app
from engine.store import Store
from tests.dashboard.data import NOW, fill
from tests.server.conftest import copy_fleet

ADMIN = "admin-token-for-dashboard-tests"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """The example operator repo."""
    return copy_fleet(tmp_path / "fleet")


@pytest.fixture
def store(repo: Path) -> Iterator[Store]:
    """The repo's default SQLite store (so `-C repo` commands read it)."""
    (repo / ".engine").mkdir(exist_ok=True)
    with Store.open(f"sqlite:///{repo / '.engine' / 'state.db'}") as opened:
        yield opened


@pytest.fixture
def rollout_id(store: Store) -> int:
    """The halted rollout of tests.dashboard.data."""
    return fill(store)


@pytest.fixture
def client(repo: Path, store: Store, rollout_id: int) -> Iterator[TestClient]:
    """The app in-process on the filled store, its clock at data.NOW."""
    settings = ServerSettings(
        store=store,
        repo_root=repo,
        admin_token=ADMIN,
        enrollment_secret="enrollment-secret",
        clock=lambda: NOW,
        poll_interval=60,
    )
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as c:
        yield c


def log_in(client: TestClient) -> str:
    """Log the client in; returns the CSRF token the pages carry."""
    r = client.post("/login", data={"token": ADMIN, "next": "/"}, follow_redirects=False)
    assert r.status_code == 303, r.text
    page: str = client.get("/rollouts").text
    marker = 'name="csrf" value="'
    start = page.index(marker) + len(marker)
    return page[start : page.index('"', start)]
