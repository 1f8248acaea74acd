"""Operator notifications: HMAC-SHA256-signed JSON POSTs, sent off the controller's thread.

Each event is one JSON object POSTed to the configured URL with headers
``X-Fleet-Event`` (e.g. ``rollout.halted``), ``X-Fleet-Delivery`` (a unique
id, the same on retries) and ``X-Fleet-Signature: sha256=<hex>``: the
HMAC-SHA256 of the exact body bytes with the shared secret, as GitHub signs
its webhooks. A receiver recomputes it (``verify_signature``) and compares in
constant time. Delivery is retried with backoff on connection errors and 5xx
answers; a full queue drops the event with a log line rather than block.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "SIGNATURE_HEADER",
    "WebhookSender",
    "sign_body",
    "verify_signature",
]

SIGNATURE_HEADER = "X-Fleet-Signature"
EVENT_HEADER = "X-Fleet-Event"
DELIVERY_HEADER = "X-Fleet-Delivery"

_log = logging.getLogger("engine.rollouts.webhook")
_STOP = object()


@dataclass(frozen=True)
class _Delivery:
    event: str
    body: bytes
    delivery: str


def sign_body(secret: str, body: bytes) -> str:
    """The signature header value of ``body``: ``sha256=<hex of HMAC-SHA256(secret, body)>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(secret: str, body: bytes, header: str | None) -> bool:
    """True when ``header`` is the signature of ``body`` under ``secret`` (constant-time)."""
    if not header:
        return False
    return hmac.compare_digest(sign_body(secret, body), header)


class WebhookSender:
    """Delivers events to one URL from a background thread, with bounded retries."""

    def __init__(
        self,
        url: str,
        secret: str | None,
        *,
        timeout: float = 5.0,
        attempts: int = 4,
        backoff: float = 1.0,
        max_queue: int = 1000,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """Start the sender thread. Without a secret the body is sent unsigned (logged once)."""
        self.url = url
        self.secret = secret
        self.timeout = timeout
        self.attempts = attempts
        self.backoff = backoff
        self._sleep = sleep
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_queue)
        self.delivered = 0
        self.failed = 0
        if not secret:
            _log.warning("webhook %s has no secret: its events are not signed", url)
        self._thread = threading.Thread(target=self._run, name="webhook-sender", daemon=True)
        self._thread.start()

    def send(self, event: str, payload: dict[str, Any]) -> None:
        """Queue an event for delivery; returns at once (drops it when the queue is full)."""
        body = json.dumps({"event": event, **payload}, sort_keys=True, default=str).encode()
        try:
            self._queue.put_nowait(_Delivery(event, body, uuid.uuid4().hex))
        except queue.Full:
            self.failed += 1
            _log.error("webhook queue full: dropped %s", event)

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (waiting at most ``timeout`` seconds), then stop the thread."""
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            assert isinstance(item, _Delivery)
            event, body, delivery = item.event, item.body, item.delivery
            try:
                self._deliver(event, body, delivery)
            except Exception:  # the sender thread must never die
                _log.exception("webhook delivery of %s failed", event)
                self.failed += 1

    def _deliver(self, event: str, body: bytes, delivery: str) -> None:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "fleet-engine-webhook/1",
            EVENT_HEADER: event,
            DELIVERY_HEADER: delivery,
        }
        if self.secret:
            headers[SIGNATURE_HEADER] = sign_body(self.secret, body)
        for attempt in range(1, self.attempts + 1):
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    status = int(response.status)
            except urllib.error.HTTPError as e:
                status = e.code
            except (OSError, ValueError) as e:
                status = 0
                _log.warning("webhook %s attempt %d: %s", event, attempt, e)
            if 200 <= status < 300:
                self.delivered += 1
                return
            if 400 <= status < 500:
                _log.error("webhook %s refused with HTTP %d; not retried", event, status)
                self.failed += 1
                return
            if attempt < self.attempts:
                self._sleep(self.backoff * 2 ** (attempt - 1))
        _log.error("webhook %s not delivered after %d attempts", event, self.attempts)
        self.failed += 1
