"""Single-use, per-device enrollment codes ("invites") an operator issues.

``engine devices invite DEVICE`` stores the sha256 of a fresh random code with
an expiry; the device's first enrollment trades the code for its token
(``EnrollRequest.invite_code``). A code works once, for that device only,
before it expires; issuing a new one replaces the old. Functions take a
SQLAlchemy ``Connection`` in the caller's transaction, so a refused
enrollment rolls the redemption back with everything else.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, delete, insert, select, update

from engine.server.credentials import hash_token
from engine.server.errors import ServerError
from engine.store.schema import invites

__all__ = ["Invite", "InviteError", "issue_invite", "redeem_invite"]

#: Characters of a code: no 0/O or 1/l/I, so a code read aloud or retyped survives.
_ALPHABET = "23456789abcdefghjkmnpqrstuvwxyz"
_GROUPS, _GROUP_LEN = 5, 5  # 25 characters of 31: about 124 bits


class InviteError(ServerError):
    """An invite code that is wrong, used, expired or for another device."""


@dataclass(frozen=True)
class Invite:
    """A new code for ``device`` (shown once) and when it stops working."""

    device: str
    code: str
    expires_at: datetime


def _new_code() -> str:
    groups = ("".join(secrets.choice(_ALPHABET) for _ in range(_GROUP_LEN)) for _ in range(_GROUPS))
    return "-".join(groups)


def issue_invite(conn: Connection, device: str, ttl: timedelta, now: datetime) -> Invite:
    """Store a fresh code for ``device`` valid for ``ttl`` (replacing any earlier code)."""
    if ttl <= timedelta(0):
        raise InviteError(f"an invite's lifetime must be positive, found {ttl}")
    code = _new_code()
    conn.execute(delete(invites).where(invites.c.device == device))
    conn.execute(
        insert(invites).values(
            device=device,
            code_hash=hash_token(code),
            created_at=now,
            expires_at=now + ttl,
            used_at=None,
        )
    )
    return Invite(device, code, now + ttl)


def redeem_invite(conn: Connection, device: str, code: str, now: datetime) -> None:
    """Mark ``device``'s code used; InviteError (saying why) when it is not a valid code.

    The row is claimed with a conditional UPDATE, so two enrollments racing
    with the same code cannot both succeed.
    """
    row = conn.execute(select(invites).where(invites.c.device == device)).first()
    if row is None or not hmac.compare_digest(row.code_hash, hash_token(code.strip())):
        raise InviteError(
            f"wrong invite code for device {device!r} (issue one with engine devices invite)"
        )
    if row.used_at is not None:
        raise InviteError(
            f"the invite code of device {device!r} was already used at "
            f"{row.used_at.isoformat()}; issue a new one with engine devices invite"
        )
    if row.expires_at <= now:
        raise InviteError(
            f"the invite code of device {device!r} expired at {row.expires_at.isoformat()}; "
            "issue a new one with engine devices invite"
        )
    claimed = conn.execute(
        update(invites)
        .where(
            invites.c.device == device,
            invites.c.code_hash == row.code_hash,
            invites.c.used_at.is_(None),
        )
        .values(used_at=now)
    )
    if claimed.rowcount != 1:
        raise InviteError(f"the invite code of device {device!r} was used meanwhile")
