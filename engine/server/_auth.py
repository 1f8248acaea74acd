"""Who may call what: device tokens (cached briefly) and the admin token."""

from __future__ import annotations

import enum
import hmac
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

import anyio.to_thread

from engine.errors import StoreError
from engine.server._http import refuse
from engine.server.credentials import hash_token

__all__ = ["MISSING", "DeviceTokens", "Missing", "TokenRow", "bearer"]

log = logging.getLogger("engine.server")

#: Unknown device ids whose "not enrolled" answer is cached (least recently used dropped).
MAX_UNKNOWN = 50_000

_BEARER = "bearer "
_RETRY = {"Retry-After": "5"}
_AUTHENTICATE = {"WWW-Authenticate": "Bearer"}
#: Compared against when a device is unknown, so that both answers take the same work.
_NO_HASH = "0" * 64


def bearer(header: str | None) -> str:
    """The token of an ``Authorization: Bearer`` header value; 401 when there is none."""
    if header is None or header[:7].lower() != _BEARER or not header[7:].strip():
        refuse(
            401,
            "missing credentials: send 'Authorization: Bearer <token>'",
            _AUTHENTICATE,
            code="missing_token",
        )
    return header[7:].strip()


class Missing(enum.Enum):
    """Marks a device whose registry row is not cached."""

    MISSING = enum.auto()


MISSING = Missing.MISSING


class TokenRow(NamedTuple):
    """A device's credential as the registry holds it (hashes only)."""

    token_hash: str
    revoked: bool
    #: the token its last re-enrollment replaced, how and when (None: never replaced)
    replaced_hash: str | None = None
    replaced: str | None = None


#: A registry lookup: device -> its TokenRow, or None when not enrolled.
Lookup = Callable[[str], TokenRow | None]


class DeviceTokens:
    """Checks device tokens against the registry, caching each device's row ``ttl`` seconds.

    A revocation made through this server is effective at once (``forget``);
    one made elsewhere (another replica, ``engine devices revoke``) within ``ttl``.
    Rows of enrolled devices are cached without a count limit (there is one per
    device of the fleet); "not enrolled" answers in an LRU of ``max_unknown``.
    """

    def __init__(self, lookup: Lookup, ttl: float = 5.0, *, max_unknown: int = MAX_UNKNOWN) -> None:
        """Use ``lookup`` on a cache miss; keep answers ``ttl`` seconds."""
        self._lookup = lookup
        self._ttl = ttl
        self._max_unknown = max_unknown
        self._cache: dict[str, tuple[float, TokenRow]] = {}
        self._unknown: OrderedDict[str, float] = OrderedDict()

    def check(self, authorization: str | None, device: str) -> None:
        """Refuse unless the Authorization header value carries ``device``'s current token.

        401 for a missing, wrong, replaced or revoked token (the same answer
        whether or not the device id exists, unless the caller holds the id's
        replaced or revoked token); 503 when the registry cannot be read.
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

    def cached(self, device: str) -> TokenRow | Missing | None:
        """The cached registry row of ``device`` (None: not enrolled), or MISSING."""
        now = time.monotonic()
        hit = self._cache.get(device)
        if hit is not None and hit[0] > now:
            return hit[1]
        unknown = self._unknown.get(device)
        if unknown is not None and unknown > now:
            return None
        return MISSING

    def remember(self, device: str, row: TokenRow | None) -> None:
        """Cache ``device``'s registry row for ``ttl`` seconds."""
        until = time.monotonic() + self._ttl
        if row is not None:
            self._unknown.pop(device, None)
            self._cache[device] = (until, row)
            return
        self._cache.pop(device, None)
        self._unknown[device] = until
        self._unknown.move_to_end(device)
        while len(self._unknown) > self._max_unknown:
            self._unknown.popitem(last=False)

    @staticmethod
    def verify(device: str, token: str, row: TokenRow | None) -> None:
        """Refuse (401) unless ``token`` is the current token of ``row``."""
        presented = hash_token(token)
        current = _NO_HASH if row is None else row.token_hash
        if not hmac.compare_digest(presented, current) or row is None:
            if (
                row is not None
                and row.replaced_hash is not None
                and hmac.compare_digest(presented, row.replaced_hash)
            ):
                refuse(
                    401,
                    f"the token of device {device!r} was replaced {row.replaced}; if this "
                    "device did not enroll again, another one now uses its id: tell the "
                    "operator (engine devices requests, engine devices revoke)",
                    _AUTHENTICATE,
                    code="token_replaced",
                )
            refuse(
                401,
                f"this token is not valid for device {device!r}: enroll with POST /v1/enroll",
                _AUTHENTICATE,
                code="invalid_token",
            )
        if row.revoked:
            refuse(
                401,
                f"the token of device {device!r} was revoked",
                _AUTHENTICATE,
                code="token_revoked",
            )

    def forget(self, device: str) -> None:
        """Drop the cached row of ``device`` (after enrolling or revoking it here)."""
        self._cache.pop(device, None)
        self._unknown.pop(device, None)
