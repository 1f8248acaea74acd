"""The device token cache: bounded for unknown ids, never dropping enrolled devices."""

from __future__ import annotations

import pytest
from fastapi import HTTPException

from engine.server._auth import DeviceTokens, TokenRow
from engine.server._throttle import FailureThrottle
from engine.server.credentials import hash_token


def test_unknown_ids_are_bounded_and_valid_entries_stay_cached() -> None:
    """Many unknown ids fill only their own LRU; an enrolled device's row is still cached
    (no new lookup) after 10x the bound of unknown ids."""
    lookups: list[str] = []
    rows = {"dev-1": TokenRow(hash_token("good"), False)}

    def lookup(device: str) -> TokenRow | None:
        lookups.append(device)
        return rows.get(device)

    tokens = DeviceTokens(lookup, ttl=3600, max_unknown=100)
    tokens.check("Bearer good", "dev-1")
    for i in range(1000):
        with pytest.raises(HTTPException):
            tokens.check("Bearer x", f"ghost-{i}")
    lookups.clear()
    tokens.check("Bearer good", "dev-1")
    assert lookups == []
    assert len(tokens._unknown) == 100
    with pytest.raises(HTTPException):
        tokens.check("Bearer x", "ghost-999")  # recent: still cached
    with pytest.raises(HTTPException):
        tokens.check("Bearer x", "ghost-0")  # evicted: looked up again
    assert lookups == ["ghost-0"]


def test_failure_throttle_blocks_after_the_limit_until_the_window_ends() -> None:
    """A key is blocked after ``limit`` failures and free again once its window ended."""
    now = [0.0]
    throttle = FailureThrottle(3, 60.0, max_keys=2, clock=lambda: now[0])
    assert [throttle.failed("a") for _ in range(3)] == [1, 2, 3]
    assert throttle.blocked("a") == pytest.approx(60.0)
    assert throttle.blocked("b") is None
    now[0] = 61.0
    assert throttle.blocked("a") is None
    for key in ("x", "y", "z"):
        throttle.failed(key)
    assert len(throttle._keys) == 2
