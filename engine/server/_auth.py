"""Who may call what: device tokens (cached briefly) and the admin token."""

from __future__ import annotations

import enum
import hmac
import logging
import time
from collections.abc import Callable

import anyio.to_thread

from engine.errors import StoreError
from engine.server._http import refuse
from engine.server.credentials import hash_token

__all__ = ["MISSING", "DeviceTokens", "Missing", "bearer"]

log = logging.getLogger("engine.server")

#: Cached entries beyond this many are dropped all at once (a fleet is far smaller).
_MAX_ENTRIES = 500_000

_BEARER = "bearer "
_RETRY = {"Retry-After": "5"}


def bearer(header: str | None) -> str:
    """The token of an ``Authorization: Bearer`` header value; 401 when there is none."""
    if header is None or header[:7].lower() != _BEARER or not header[7:].strip():
        refuse(
            401,
            "missing credentials: send 'Authorization: Bearer <token>'",
            {"WWW-Authenticate": "Bearer"},
        )
    return header[7:].strip()


class Missing(enum.Enum):
    """Marks a device whose registry row is not cached."""

    MISSING = enum.auto()


MISSING = Missing.MISSING

#: A registry lookup: device -> (token sha256, revoked) or None when not enrolled.
Lookup = Callable[[str], tuple[str, bool] | None]


class DeviceTokens:
    """Checks device tokens against the registry, caching each device's row ``ttl`` seconds.

    A revocation made through this server is effective at once (``forget``);
    one made elsewhere (another replica, ``engine devices revoke``) within ``ttl``.
    """

    def __init__(self, lookup: Lookup, ttl: float = 5.0) -> None:
        """Use ``lookup`` on a cache miss; keep answers ``ttl`` seconds."""
        self._lookup = lookup
        self._ttl = ttl
        self._cache: dict[str, tuple[float, tuple[str, bool] | None]] = {}

    def check(self, authorization: str | None, device: str) -> None:
        """Refuse unless the Authorization header value carries ``device``'s current token.

        401: no token, device not enrolled, or revoked (the device may enroll
        again, unless revoked); 403: a token that is not this device's;
        503 when the registry cannot be read.
        """
        token = bearer(authorization)
        row = self.cached(device)
        if row is MISSING:
            try:
                row = self._lookup(device)
            except StoreError as e:
                log.error("token of %s not checked: %s", device, e)
                refuse(503, "the server cannot reach its store; try again later", _RETRY)
            self.remember(device, row)
        self.verify(device, token, row)

    async def check_async(self, authorization: str | None, device: str) -> None:
        """``check`` without blocking the event loop: a cache miss is looked up in a thread."""
        token = bearer(authorization)
        row = self.cached(device)
        if row is MISSING:
            await anyio.to_thread.run_sync(self.check, authorization, device)
            return
        self.verify(device, token, row)

    def cached(self, device: str) -> tuple[str, bool] | Missing | None:
        """The cached registry row of ``device`` (None: not enrolled), or MISSING."""
        hit = self._cache.get(device)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        return MISSING

    def remember(self, device: str, row: tuple[str, bool] | None) -> None:
        """Cache ``device``'s registry row for ``ttl`` seconds."""
        if len(self._cache) >= _MAX_ENTRIES:
            self._cache.clear()
        self._cache[device] = (time.monotonic() + self._ttl, row)

    @staticmethod
    def verify(device: str, token: str, row: tuple[str, bool] | None) -> None:
        """Refuse (401/403) unless ``token`` is the current token of ``row``."""
        if row is None:
            refuse(
                401,
                f"device {device!r} is not enrolled: enroll with POST /v1/enroll",
                {"WWW-Authenticate": "Bearer"},
            )
        token_hash, revoked = row
        if not hmac.compare_digest(hash_token(token), token_hash):
            refuse(403, f"this token does not belong to device {device!r}")
        if revoked:
            refuse(
                401, f"the token of device {device!r} was revoked", {"WWW-Authenticate": "Bearer"}
            )

    def forget(self, device: str) -> None:
        """Drop the cached row of ``device`` (after enrolling or revoking it here)."""
        self._cache.pop(device, None)
