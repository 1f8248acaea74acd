"""Maintenance windows across time zones and DST; webhook signing and retries."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from engine.rollouts import WebhookSender, in_window, next_window_start, sign_body, verify_signature
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


def test_signature_is_hmac_sha256_of_body() -> None:
    """The signature header is sha256=HMAC(secret, body); a changed body or secret fails."""
    body = b'{"event": "rollout.halted"}'
    header = sign_body("k", body)
    assert header == "sha256=" + __import__("hmac").new(b"k", body, "sha256").hexdigest()
    assert verify_signature("k", body, header)
    assert not verify_signature("k", body + b" ", header)
    assert not verify_signature("other", body, header)
    assert not verify_signature("k", body, None)


def test_webhook_retried_after_server_error() -> None:
    """A 500 answer is retried with the same delivery id; the retry's signature is valid."""
    with webhook_receiver() as receiver:
        receiver.statuses = [500, 503]
        sender = WebhookSender(receiver.url, "k", backoff=0.01)
        sender.send("rollout.completed", {"reason": "done"})
        assert receiver.got.wait(10)
        sender.close()
    assert len(receiver.deliveries) == 3
    ids = {d.headers["X-Fleet-Delivery"] for d in receiver.deliveries}
    assert len(ids) == 1
    last = receiver.deliveries[-1]
    assert verify_signature("k", last.body, last.headers["X-Fleet-Signature"])
    assert json.loads(last.body) == {"event": "rollout.completed", "reason": "done"}
    assert (sender.delivered, sender.failed) == (1, 0)


def test_webhook_unreachable_gives_up_without_blocking() -> None:
    """An unreachable receiver costs bounded attempts in the background; send returns at once."""
    with webhook_receiver() as receiver:
        url = receiver.url
    sender = WebhookSender(url, "k", attempts=2, backoff=0.01, timeout=1)
    sender.send("rollout.halted", {})
    sender.close(timeout=10)
    assert (sender.delivered, sender.failed) == (0, 1)


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
