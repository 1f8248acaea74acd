"""The device registry: enrolled devices, their hashed tokens, revocation.

Used by the server (enrollment, authentication, operator API) and by
``engine devices`` directly against the store. Functions take a SQLAlchemy
``Connection`` in the caller's transaction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select
from sqlalchemy.dialects import postgresql, sqlite

from engine.capabilities import stored_can_update
from engine.server.credentials import hash_token, new_token
from engine.server.errors import ServerError
from engine.store.schema import devices, heartbeats, reports
from fleetbase.platform import Platform

__all__ = [
    "DeviceRecord",
    "DeviceRevokedError",
    "DeviceSummary",
    "Enrollment",
    "enroll_device",
    "get_device",
    "list_devices",
    "revoke_device",
]

log = logging.getLogger("engine.server")


class DeviceRevokedError(ServerError):
    """The device's token was revoked; only an operator can enroll it again."""


@dataclass(frozen=True)
class DeviceRecord:
    """One row of the ``devices`` table."""

    device: str
    platform: str
    token_hash: str
    enrolled_at: datetime
    revoked_at: datetime | None
    runtime_version: str | None
    enrollments: int
    key_hash: str | None = None


@dataclass(frozen=True)
class Enrollment:
    """A new token for a device (shown once) and whether it replaced an earlier one."""

    device: str
    token: str
    reenrolled: bool


@dataclass(frozen=True)
class DeviceSummary:
    """A device as the operator sees it: enrollment, last report and last heartbeat."""

    device: str
    platform: str | None
    enrolled: bool
    enrolled_at: datetime | None
    revoked_at: datetime | None
    agent_version: str | None
    known_good: str | None
    last_seen: datetime | None
    last_result: str | None
    tx_target: str | None
    heartbeat_version: str | None
    heartbeat_at: datetime | None
    adoption: str | None = None  # known | unknown | empty: how the runtime took the agent over
    adopted_version: str | None = None
    adoption_detail: str | None = None
    runtime_version: str | None = None
    #: whether its runtime can take a runtime release (None: it never said)
    runtime_self_update: bool | None = None

    def adopted(self) -> str | None:
        """What the runtime adopted, in a word: the release matched or ``unknown``/``empty``."""
        if self.adoption == "known" and self.adopted_version:
            return self.adopted_version
        return self.adoption

    def as_json(self, now: datetime, online_within: float) -> dict[str, Any]:
        """A JSON-ready dict with ``online``: seen within ``online_within`` seconds of ``now``."""
        online = (
            self.last_seen is not None and (now - self.last_seen).total_seconds() <= online_within
        )
        return {
            "device": self.device,
            "platform": self.platform,
            "enrolled": self.enrolled,
            "enrolled_at": _iso(self.enrolled_at),
            "revoked": self.revoked_at is not None,
            "revoked_at": _iso(self.revoked_at),
            "agent_version": self.agent_version,
            "known_good": self.known_good,
            "runtime_version": self.runtime_version,
            "runtime_self_update": self.runtime_self_update,
            "last_checkin": _iso(self.last_seen),
            "last_result": self.last_result,
            "transaction_target": self.tx_target,
            "heartbeat_version": self.heartbeat_version,
            "heartbeat_at": _iso(self.heartbeat_at),
            "adoption": None
            if self.adoption is None
            else {
                "status": self.adoption,
                "version": self.adopted_version,
                "detail": self.adoption_detail,
            },
            "online": online,
        }


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _insert(conn: Connection) -> Any:
    return postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert


def get_device(conn: Connection, device: str) -> DeviceRecord | None:
    """The registry row of ``device``, or None when it never enrolled."""
    row = conn.execute(select(devices).where(devices.c.device == device)).first()
    if row is None:
        return None
    return DeviceRecord(
        device=row.device,
        platform=row.platform,
        token_hash=row.token_hash,
        enrolled_at=row.enrolled_at,
        revoked_at=row.revoked_at,
        runtime_version=row.runtime_version,
        enrollments=row.enrollments,
        key_hash=row.key_hash,
    )


def enroll_device(
    conn: Connection,
    device: str,
    platform: Platform,
    now: datetime,
    *,
    runtime_version: str | None = None,
    operator: bool = False,
    key_hash: str | None = None,
    how: str = "an operator (engine devices enroll)",
) -> Enrollment:
    """Give ``device`` a new random token, replacing any earlier one; returns the token.

    Only the token's sha256 is stored; a replaced token's hash is kept with ``how``
    and when, so its holder is told why it stopped working. ``key_hash`` is the
    sha256 of the device key it proved (kept when None). Whether a replacement is
    allowed is the caller's decision (``engine.server.enrollment``). A revoked
    device is enrolled again only by an operator (``operator=True``, which also
    lifts the revocation); otherwise raises DeviceRevokedError and changes nothing.
    """
    token = new_token()
    previous = get_device(conn, device)
    if previous is not None and previous.revoked_at is not None and not operator:
        raise DeviceRevokedError(
            f"device {device!r} was revoked at {previous.revoked_at.isoformat()}; "
            "an operator must enroll it again (engine devices enroll)"
        )
    stmt = _insert(conn)(devices).values(
        device=device,
        platform=platform.value,
        token_hash=hash_token(token),
        enrolled_at=now,
        revoked_at=None,
        runtime_version=runtime_version,
        enrollments=1,
        key_hash=key_hash,
    )
    update = stmt.on_conflict_do_update(
        index_elements=[devices.c.device],
        set_={
            "platform": stmt.excluded.platform,
            "token_hash": stmt.excluded.token_hash,
            "enrolled_at": stmt.excluded.enrolled_at,
            "revoked_at": None,
            "runtime_version": stmt.excluded.runtime_version,
            "enrollments": devices.c.enrollments + 1,
            "key_hash": func.coalesce(stmt.excluded.key_hash, devices.c.key_hash),
            "replaced_hash": devices.c.token_hash,
            "replaced_at": stmt.excluded.enrolled_at,
            "replaced_how": how[:100],
        },
        # A revocation that raced in after the check above wins.
        where=None if operator else devices.c.revoked_at.is_(None),
    )
    if conn.execute(update).rowcount == 0:
        raise DeviceRevokedError(f"device {device!r} was revoked; an operator must enroll it again")
    if previous is not None:
        log.warning(
            "device %s enrolled again (enrollment %d, by %s): its previous token no longer works",
            device,
            previous.enrollments + 1,
            how,
        )
    else:
        log.info("device %s enrolled (%s)", device, platform.value)
    return Enrollment(device=device, token=token, reenrolled=previous is not None)


def revoke_device(conn: Connection, device: str, now: datetime) -> bool:
    """Revoke ``device``'s token; False when the device never enrolled.

    Revoking twice keeps the first revocation time.
    """
    result = conn.execute(
        devices.update()
        .where(devices.c.device == device, devices.c.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    if result.rowcount:
        log.warning("device %s revoked", device)
        return True
    return get_device(conn, device) is not None


def list_devices(conn: Connection) -> list[DeviceSummary]:
    """Every enrolled or reporting device, sorted by id, with its report and heartbeat."""
    enrolled = {r.device: r for r in conn.execute(select(devices))}
    reported = {r.device: r for r in conn.execute(select(reports))}
    beats = {r.device: r for r in conn.execute(select(heartbeats))}
    out: list[DeviceSummary] = []
    for device in sorted(enrolled.keys() | reported.keys()):
        d, r, h = enrolled.get(device), reported.get(device), beats.get(device)
        out.append(
            DeviceSummary(
                device=device,
                platform=(d.platform if d is not None else r.platform if r is not None else None),
                enrolled=d is not None,
                enrolled_at=d.enrolled_at if d is not None else None,
                revoked_at=d.revoked_at if d is not None else None,
                agent_version=r.agent_version if r is not None else None,
                known_good=r.known_good if r is not None else None,
                last_seen=r.last_seen if r is not None else None,
                last_result=r.last_result if r is not None else None,
                tx_target=r.tx_target if r is not None else None,
                heartbeat_version=h.version if h is not None else None,
                heartbeat_at=h.at if h is not None else None,
                adoption=r.adoption if r is not None else None,
                adopted_version=r.adopted_version if r is not None else None,
                adoption_detail=r.adoption_detail if r is not None else None,
                runtime_version=r.runtime_version if r is not None else None,
                runtime_self_update=stored_can_update(r.features) if r is not None else None,
            )
        )
    return out
