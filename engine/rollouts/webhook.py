"""Operator notifications: signed JSON POSTs from a store-backed outbox.

An event is written to ``webhook_deliveries`` in the same transaction as the
change it announces (``record``), so a notification is never lost and never
sent for a change that rolled back. A background thread sends due rows,
retrying connection errors, 408, 429 and 5xx answers with exponential backoff
(``backoff`` doubling up to ``backoff_cap``) for ``max_attempts`` attempts,
across server restarts; another 4xx is not retried. Replicas claim a row
before sending it, so one replica sends it.

Each POST carries ``X-Fleet-Event``, ``X-Fleet-Delivery`` (unique per event,
the same on every retry) and ``X-Fleet-Signature: t=<unix seconds>,v1=<hex>``
where ``v1`` is the HMAC-SHA256, under the shared secret, of ``"<t>." + body``
(the scheme Stripe uses). A receiver checks it with ``verify_signature``,
which refuses a timestamp older than its tolerance, and remembers the delivery
ids it saw within that tolerance to drop replays (docs/rollouts.md).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update

from engine.errors import StoreError
from engine.store import Store
from engine.store.schema import webhook_deliveries
from fleetbase.clock import utc_now

__all__ = [
    "DELIVERY_HEADER",
    "EVENT_HEADER",
    "SIGNATURE_HEADER",
    "SIGNATURE_TOLERANCE",
    "WebhookOutbox",
    "sign_body",
    "verify_signature",
]

SIGNATURE_HEADER = "X-Fleet-Signature"
EVENT_HEADER = "X-Fleet-Event"
DELIVERY_HEADER = "X-Fleet-Delivery"
#: Seconds a receiver accepts between a signature's timestamp and its own clock.
SIGNATURE_TOLERANCE = 300

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
#: Delivered rows are deleted after this long (failed ones are kept for the operator).
KEEP_DELIVERED = timedelta(days=7)

_log = logging.getLogger("engine.rollouts.webhook")


def sign_body(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The signature header value of ``body`` sent at ``timestamp`` (default now):
    ``t=<timestamp>,v1=<hex of HMAC-SHA256(secret, "<timestamp>." + body)>``."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify_signature(
    secret: str,
    body: bytes,
    header: str | None,
    *,
    tolerance: float = SIGNATURE_TOLERANCE,
    now: float | None = None,
) -> bool:
    """True when ``header`` signs ``body`` under ``secret`` (constant-time) with a timestamp
    within ``tolerance`` seconds of ``now`` (default: this machine's clock)."""
    if not header:
        return False
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if sep:
            parts.setdefault(key, []).append(value)
    try:
        (stamp,) = parts.get("t", [])
        t = int(stamp)
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - t) > tolerance:
        return False
    expected = sign_body(secret, body, t).partition(",v1=")[2]
    return any(hmac.compare_digest(expected, v) for v in parts.get("v1", []))


class WebhookOutbox:
    """Records events in the store and delivers them to one URL from a background thread."""

    def __init__(
        self,
        store: Store,
        url: str,
        secret: str | None,
        *,
        timeout: float = 5.0,
        max_attempts: int = 12,
        backoff: float = 2.0,
        backoff_cap: float = 3600.0,
        poll: float = 1.0,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        """Deliver ``store``'s pending events to ``url``; unsigned without a secret (logged)."""
        self.store = store
        self.url = url
        self.secret = secret
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.backoff_cap = backoff_cap
        self.poll = poll
        self.clock = clock
        self.delivered = 0
        self.failed = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if not secret:
            _log.warning("webhook %s has no secret: its events are not signed", url)

    # -- recording ------------------------------------------------------------------------

    def record(self, conn: Connection, event: str, payload: dict[str, Any]) -> str:
        """Write ``event`` to the outbox in the caller's transaction; its delivery id."""
        delivery = uuid.uuid4().hex
        now = self.clock()
        body = json.dumps(
            {"event": event, "delivery": delivery, **payload}, sort_keys=True, default=str
        ).encode()
        conn.execute(
            insert(webhook_deliveries).values(
                delivery=delivery,
                event=event,
                body=body,
                created_at=now,
                attempts=0,
                next_attempt_at=now,
                status=PENDING,
            )
        )
        return delivery

    def wake(self) -> None:
        """Have the sender look for due deliveries now (after a commit that recorded some)."""
        self._wake.set()

    # -- sending --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the sender thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="webhook-sender", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the sender thread; what is still pending stays in the store for the next start."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def deliver_due(self) -> int:
        """Send every delivery that is due now, once each; how many were attempted."""
        t = webhook_deliveries
        now = self.clock()
        with self.store.write() as conn:
            conn.execute(
                delete(t).where(t.c.status == DELIVERED, t.c.delivered_at < now - KEEP_DELIVERED)
            )
            rows = conn.execute(
                select(t.c.id, t.c.delivery, t.c.event, t.c.body, t.c.attempts)
                .where(t.c.status == PENDING, t.c.next_attempt_at <= now)
                .order_by(t.c.id)
                .limit(100)
            ).all()
            # Claimed for the attempt's duration: another replica leaves them alone.
            claim = now + timedelta(seconds=self.timeout + 5)
            conn.execute(
                update(t).where(t.c.id.in_([r.id for r in rows])).values(next_attempt_at=claim)
            )
        for row in rows:
            if self._stop.is_set() and self._thread is not None:
                break
            self._attempt(row.id, row.delivery, row.event, bytes(row.body), row.attempts + 1)
        return len(rows)

    def _attempt(self, row_id: int, delivery: str, event: str, body: bytes, attempt: int) -> None:
        status, error = self._post(delivery, event, body)
        now = self.clock()
        values: dict[str, Any] = {"attempts": attempt, "last_error": error}
        if 200 <= status < 300:
            values.update(status=DELIVERED, delivered_at=now, last_error=None)
            self.delivered += 1
        elif (400 <= status < 500 and status not in (408, 429)) or attempt >= self.max_attempts:
            values.update(status=FAILED)
            self.failed += 1
            _log.error("webhook %s (%s) not delivered: %s; given up", event, delivery, error)
        else:
            delay = min(self.backoff * 2 ** (attempt - 1), self.backoff_cap)
            values.update(next_attempt_at=now + timedelta(seconds=delay))
            _log.warning("webhook %s attempt %d: %s; again in %.0fs", event, attempt, error, delay)
        with self.store.write() as conn:
            conn.execute(
                update(webhook_deliveries).where(webhook_deliveries.c.id == row_id).values(**values)
            )

    def _post(self, delivery: str, event: str, body: bytes) -> tuple[int, str | None]:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "fleet-engine-webhook/2",
            EVENT_HEADER: event,
            DELIVERY_HEADER: delivery,
        }
        if self.secret:
            headers[SIGNATURE_HEADER] = sign_body(self.secret, body)
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return int(response.status), None
        except urllib.error.HTTPError as e:
            return e.code, f"HTTP {e.code}"
        except (OSError, ValueError) as e:
            return 0, str(e)[:500]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.deliver_due()
            except StoreError as e:
                _log.error("webhook outbox not read: %s", e)
            except Exception:  # the sender thread must never die
                _log.exception("webhook delivery failed")
            self._wake.wait(self.poll)
            self._wake.clear()
