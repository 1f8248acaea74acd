"""Who may call what: device tokens (cached briefly) and the admin token."""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable

from fastapi import Request

from engine.server._http import refuse
from engine.server.credentials import hash_token

__all__ = ["DeviceTokens", "bearer", "require_admin"]

#: Cached entries beyond this many are dropped all at once (a fleet is far smaller).
_MAX_ENTRIES = 500_000

_BEARER = "bearer "


def bearer(request: Request) -> str:
    """The bearer token of the request; 401 when there is none."""
    header = request.headers.get("authorization")
    if header is None or header[:7].lower() != _BEARER or not header[7:].strip():
        refuse(
            401,
            "missing credentials: send 'Authorization: Bearer <token>'",
            {"WWW-Authenticate": "Bearer"},
        )
    return header[7:].strip()


def require_admin(request: Request, admin_token: str) -> None:
    """401 without a bearer token, 403 when it is not the admin token."""
    token = bearer(request)
    if not hmac.compare_digest(token.encode(), admin_token.encode()):
        refuse(403, "this token is not the admin token")


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

    def check(self, request: Request, device: str) -> None:
        """Refuse unless the request carries ``device``'s current token.

        401: no token, device not enrolled, or revoked (the device may enroll
        again, unless revoked); 403: a token that is not this device's.
        """
        token = bearer(request)
        now = time.monotonic()
        hit = self._cache.get(device)
        if hit is not None and hit[0] > now:
            row = hit[1]
        else:
            row = self._lookup(device)
            if len(self._cache) >= _MAX_ENTRIES:
                self._cache.clear()
            self._cache[device] = (now + self._ttl, row)
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
