"""Dashboard sessions: a signed cookie after logging in with the admin token, and CSRF tokens.

The cookie holds an expiry and a random nonce, signed with a key derived from
the admin token: every replica that shares the admin token accepts it, and
changing the admin token ends every session. Nothing is stored server-side.
The CSRF token of a session is derived from its nonce (HttpOnly keeps it from
scripts; SameSite=Strict keeps it off cross-site requests; the form token
and the Origin check are the second lock).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

__all__ = ["COOKIE", "SESSION_SECONDS", "Session", "Sessions"]

COOKIE = "engine_session"
SESSION_SECONDS = 12 * 3600


@dataclass(frozen=True)
class Session:
    """A logged-in browser: its nonce and the CSRF token its forms carry."""

    nonce: str
    csrf: str
    expires: int


class Sessions:
    """Issues and checks session cookies signed with a key derived from the admin token."""

    def __init__(self, admin_token: str, lifetime: int = SESSION_SECONDS) -> None:
        """Sign with a key derived from ``admin_token``; sessions last ``lifetime`` seconds."""
        self._admin = admin_token.encode()
        self._key = hashlib.sha256(b"engine dashboard session\0" + self._admin).digest()
        self._lifetime = lifetime

    def token_matches(self, token: str) -> bool:
        """Whether ``token`` is the admin token (constant time)."""
        return hmac.compare_digest(token.strip().encode(), self._admin)

    def issue(self) -> tuple[str, Session]:
        """A new session: the cookie value to set and the session it stands for."""
        expires = int(time.time()) + self._lifetime
        nonce = secrets.token_urlsafe(18)
        body = f"{expires}.{nonce}"
        return f"{body}.{self._sign('session', body)}", self._session(nonce, expires)

    def check(self, cookie: str | None) -> Session | None:
        """The session of a cookie value; None when absent, forged, malformed or expired."""
        if not cookie or len(cookie) > 200:
            return None
        parts = cookie.split(".")
        if len(parts) != 3 or not parts[0].isdigit():
            return None
        expires_text, nonce, mac = parts
        if not hmac.compare_digest(mac, self._sign("session", f"{expires_text}.{nonce}")):
            return None
        expires = int(expires_text)
        if expires < time.time():
            return None
        return self._session(nonce, expires)

    def csrf_ok(self, session: Session, token: str | None) -> bool:
        """Whether a form's CSRF token belongs to ``session``."""
        return token is not None and hmac.compare_digest(token, session.csrf)

    @property
    def lifetime(self) -> int:
        """Seconds a session lasts."""
        return self._lifetime

    def _session(self, nonce: str, expires: int) -> Session:
        return Session(nonce=nonce, csrf=self._sign("csrf", nonce), expires=expires)

    def _sign(self, purpose: str, text: str) -> str:
        message = f"{purpose}\0{text}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()
