"""One device token cannot fill the server's disk through /events: rate, count and age."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text

from engine.server._quotas import EventQuota
from engine.store import Store
from engine.store.schema import events
from tests.server.conftest import copy_fleet, running_server
from tests.server.helpers import bearer

DEVICE = "berlin-pos-0001"
OTHER = "hamburg-srv-0002"


def _batch(count: int, detail: str = "d" * 400) -> dict[str, Any]:
    at = "2026-06-01T00:00:00Z"
    return {
        "events": [
            {"target": "3.0.1", "step": "download", "status": "ok", "detail": detail, "at": at}
            for _ in range(count)
        ]
    }


def _count(url: str, device: str) -> int:
    with Store.open(url, migrate=False) as store, store.read() as conn:
        query = text("SELECT count(*) FROM events WHERE device = :d")
        return int(conn.execute(query, {"d": device}).scalar_one())


def test_event_flood_is_throttled_and_capped(tmp_path: Path, store_url: str) -> None:
    """A device posting full batches as fast as it can gets 429 with Retry-After once its
    burst is spent, keeps at most events_kept_per_device rows, and leaves others unaffected."""
    limits = (
        "server_limits: {events_per_minute: 60, events_burst: 200, events_kept_per_device: 150}"
    )
    repo = copy_fleet(tmp_path / "fleet", settings=limits)
    with running_server(repo, state_url=store_url) as server:
        token = server.enroll(DEVICE)
        other = server.enroll(OTHER)
        answers = []
        with server.client() as c:
            for _ in range(20):  # 2,000 events: what a flood sends in a second
                r = c.post(f"/v1/devices/{DEVICE}/events", json=_batch(100), headers=bearer(token))
                answers.append(r)
            assert [r.status_code for r in answers[:2]] == [204, 204]
            refused = [r for r in answers if r.status_code == 429]
            assert len(refused) >= 17, [r.status_code for r in answers]
            assert all(int(r.headers["Retry-After"]) >= 1 for r in refused)
            assert "quota" in refused[0].json()["detail"]
            r = c.post(f"/v1/devices/{OTHER}/events", json=_batch(5), headers=bearer(other))
            assert r.status_code == 204
        assert _count(store_url, DEVICE) == 150
        assert _count(store_url, OTHER) == 5


def test_events_past_retention_are_deleted(tmp_path: Path, store_url: str) -> None:
    """Events received longer ago than event_retention are deleted when events arrive."""
    repo = copy_fleet(tmp_path / "fleet", settings="server_limits: {event_retention: 1d}")
    with running_server(repo, state_url=store_url) as server:
        token = server.enroll(DEVICE)
        url = store_url
        old = datetime.now(UTC) - timedelta(days=3)
        rows = [
            {"device": OTHER, "target": "3.0.0", "step": "swap", "status": "ok",
             "detail": str(i), "at": old, "received_at": old}
            for i in range(50)
        ]  # fmt: skip
        with Store.open(url, migrate=False) as store, store.write() as conn:
            conn.execute(events.insert(), rows)
        assert _count(url, OTHER) == 50
        with server.client() as c:
            r = c.post(f"/v1/devices/{DEVICE}/events", json=_batch(3), headers=bearer(token))
        assert r.status_code == 204
        assert _count(url, OTHER) == 0
        assert _count(url, DEVICE) == 3


def test_quota_refills_at_its_rate() -> None:
    """The bucket allows its burst, then refills at per_minute (a pure clock, no waiting)."""
    now = [0.0]
    quota = EventQuota(per_minute=60, burst=100, clock=lambda: now[0])
    assert quota.take("d", 100) == 0
    assert quota.take("d", 10) == 10.0  # 10 events at 1/s
    now[0] += 10
    assert quota.take("d", 10) == 0
    assert quota.take("other", 100) == 0  # per device


def test_quota_remembers_a_bounded_number_of_devices() -> None:
    """A flood of distinct ids keeps at most max_devices buckets."""
    quota = EventQuota(per_minute=60, burst=100, max_devices=1000)
    for i in range(5000):
        quota.take(f"d{i}", 1)
    assert len(quota._buckets) == 1000
