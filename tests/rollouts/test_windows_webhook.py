"""Maintenance windows across time zones and DST; webhook signing, outbox and retries."""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from engine.rollouts import WebhookOutbox, in_window, next_window_start, sign_body, verify_signature
from engine.store import Store
from engine.store.schema import webhook_deliveries
from inventory.models import MaintenanceWindow
from tests.rollouts.receiver import webhook_receiver

BERLIN = MaintenanceWindow.model_validate(
    {"cron": "0 2 * * *", "duration": "3h", "timezone": "Europe/Berlin"}
)
WEEKENDS = MaintenanceWindow.model_validate(
    {"cron": "30 22 * * 6", "duration": "2h", "timezone": "America/New_York"}
)


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.mark.parametrize(
    ("window", "now", "open_"),
    [
        (BERLIN, "2026-11-27T00:59:59Z", False),  # 01:59:59 CET
        (BERLIN, "2026-11-27T01:00:00Z", True),  # 02:00 CET: opens
        (BERLIN, "2026-11-27T03:59:59Z", True),
        (BERLIN, "2026-11-27T04:00:00Z", False),  # 05:00 CET: closed
        (BERLIN, "2026-07-01T00:00:00Z", True),  # 02:00 CEST (summer time)
        (BERLIN, "2026-07-01T03:00:00Z", False),  # 05:00 CEST
        (BERLIN, "2026-11-27T12:00:00Z", False),
        (WEEKENDS, "2026-11-29T03:30:00Z", True),  # Sat 22:30 EST
        (WEEKENDS, "2026-11-29T05:29:00Z", True),  # Sun 00:29 EST
        (WEEKENDS, "2026-11-29T05:30:00Z", False),
        (WEEKENDS, "2026-11-28T03:30:00Z", False),  # Fri 22:30 EST
        (None, "2026-11-27T12:00:00Z", True),  # no window: always
    ],
)
def test_in_window(window: MaintenanceWindow | None, now: str, open_: bool) -> None:
    """A window is open from its cron start (local time) for its duration."""
    assert in_window(window, _at(now)) is open_


def test_next_window_start() -> None:
    """The next start is the next cron match in the window's time zone, in UTC."""
    assert next_window_start(BERLIN, _at("2026-11-27T12:00:00Z")) == _at("2026-11-28T01:00:00Z")
    assert next_window_start(BERLIN, _at("2026-07-01T12:00:00Z")) == _at("2026-07-02T00:00:00Z")
    assert next_window_start(None, _at("2026-07-01T12:00:00Z")) is None


def test_signature_covers_timestamp_and_body_and_expires() -> None:
    """The header is t=<unix>,v1=HMAC(secret, "<t>." + body); a changed body, secret or
    timestamp fails, and so does a valid signature older than the tolerance (a replay)."""
    body = b'{"event": "rollout.halted"}'
    header = sign_body("k", body, 1_800_000_000)
    mac = hmac.new(b"k", b"1800000000." + body, "sha256").hexdigest()
    assert header == f"t=1800000000,v1={mac}"
    assert verify_signature("k", body, header, now=1_800_000_100)
    assert not verify_signature("k", body + b" ", header, now=1_800_000_100)
    assert not verify_signature("other", body, header, now=1_800_000_100)
    assert not verify_signature("k", body, header.replace("t=18", "t=19"), now=1_900_000_000)
    assert not verify_signature("k", body, header, now=1_800_000_000 + 301)
    assert not verify_signature("k", body, None)
    assert not verify_signature("k", body, "sha256=" + mac)


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    """A migrated SQLite store under tmp_path."""
    with Store.open(f"sqlite:///{tmp_path / 'state.db'}") as store:
        yield store


def _deliveries(store: Store) -> list[Any]:
    with store.read() as conn:
        return list(conn.execute(select(webhook_deliveries).order_by(webhook_deliveries.c.id)))


def test_webhook_retried_after_server_error(sqlite_store: Store) -> None:
    """A 500 answer is retried with the same delivery id; the retry's signature is valid and
    the row ends delivered."""
    with webhook_receiver() as receiver:
        receiver.statuses = [500, 503]
        outbox = WebhookOutbox(sqlite_store, receiver.url, "k", backoff=0.01, poll=0.05)
        with sqlite_store.write() as conn:
            outbox.record(conn, "rollout.completed", {"reason": "done"})
        outbox.start()
        assert receiver.got.wait(10)
        outbox.close()
    assert len(receiver.deliveries) == 3
    ids = {d.headers["X-Fleet-Delivery"] for d in receiver.deliveries}
    assert len(ids) == 1
    last = receiver.deliveries[-1]
    assert verify_signature("k", last.body, last.headers["X-Fleet-Signature"])
    assert json.loads(last.body) == {
        "event": "rollout.completed", "reason": "done", "delivery": ids.pop()
    }  # fmt: skip
    (row,) = _deliveries(sqlite_store)
    assert (row.status, row.attempts) == ("delivered", 3)


def test_webhook_unreachable_gives_up_after_max_attempts(sqlite_store: Store) -> None:
    """An unreachable receiver costs bounded attempts in the background; the row is kept as
    failed with the last error."""
    with webhook_receiver() as receiver:
        url = receiver.url
    outbox = WebhookOutbox(sqlite_store, url, "k", max_attempts=2, backoff=0.01, timeout=1)
    with sqlite_store.write() as conn:
        outbox.record(conn, "rollout.halted", {})
    for _ in range(2):
        outbox.deliver_due()
        (row,) = _deliveries(sqlite_store)
        while row.status == "pending" and row.next_attempt_at > datetime.now(UTC):
            time.sleep(0.02)
            (row,) = _deliveries(sqlite_store)
    (row,) = _deliveries(sqlite_store)
    assert (row.status, row.attempts) == ("failed", 2) and row.last_error
    assert (outbox.delivered, outbox.failed) == (0, 1)


def test_webhook_client_error_is_not_retried(sqlite_store: Store) -> None:
    """A 400 answer marks the delivery failed at once (a 4xx other than 408/429)."""
    with webhook_receiver() as receiver:
        receiver.statuses = [400]
        outbox = WebhookOutbox(sqlite_store, receiver.url, "k")
        with sqlite_store.write() as conn:
            outbox.record(conn, "rollout.paused", {})
        assert outbox.deliver_due() == 1
        assert outbox.deliver_due() == 0
    (row,) = _deliveries(sqlite_store)
    assert (row.status, row.attempts, row.last_error) == ("failed", 1, "HTTP 400")


def test_timings_from_environment() -> None:
    """ENGINE_ROLLOUT_* variables override the timings; a bad value names its variable."""
    from datetime import timedelta

    from engine.rollouts import Timings

    timings = Timings.from_env(
        {"ENGINE_ROLLOUT_UPDATE_TIMEOUT": "90s", "ENGINE_ROLLOUT_MAX_ATTEMPTS": "2"}
    )
    assert timings.update_timeout == timedelta(seconds=90)
    assert timings.max_attempts == 2
    assert timings.offline_after == Timings().offline_after
    with pytest.raises(ValueError, match="ENGINE_ROLLOUT_RETRY_BACKOFF"):
        Timings.from_env({"ENGINE_ROLLOUT_RETRY_BACKOFF": "soon"})
