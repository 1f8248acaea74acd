"""Enrollment requests awaiting an operator: re-enrollments of an already-enrolled device.

Like Mender's authentication sets, a request is kept per device and device key
(only the key's sha256): ``pending`` until an operator approves or rejects it
(``engine devices approve|reject``, or the admin API); the device asks again
with the same key and, once approved, gets its token (the request is then
deleted). At most ``MAX_PENDING`` pending requests are kept per device: a new
one evicts the one seen least recently. Functions take a SQLAlchemy
``Connection`` in the caller's transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update

from engine.server.errors import ServerError
from engine.store.schema import enrollment_requests

__all__ = [
    "APPROVED",
    "MAX_PENDING",
    "PENDING",
    "REJECTED",
    "ApprovalError",
    "EnrollmentRequest",
    "decide_request",
    "find_request",
    "forget_request",
    "list_requests",
    "note_request",
]

PENDING, APPROVED, REJECTED = "pending", "approved", "rejected"
#: Pending requests kept per device (an impostor cannot grow the table without bound).
MAX_PENDING = 5


class ApprovalError(ServerError):
    """No such request, or more than one and the operator did not say which."""


@dataclass(frozen=True)
class EnrollmentRequest:
    """One request: who asked (device, key fingerprint, source), when, and its status."""

    id: int
    device: str
    key_hash: str
    platform: str
    runtime_version: str | None
    source: str | None
    requested_at: datetime
    last_seen_at: datetime
    status: str
    decided_at: datetime | None
    decided_by: str | None

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready dict; the key appears as a fingerprint (its hash's first 16 digits)."""
        return {
            "id": self.id,
            "device": self.device,
            "key_fingerprint": self.key_hash[:16],
            "platform": self.platform,
            "runtime_version": self.runtime_version,
            "source": self.source,
            "requested_at": self.requested_at.isoformat(),
            "last_seen_at": self.last_seen_at.isoformat(),
            "status": self.status,
            "decided_at": None if self.decided_at is None else self.decided_at.isoformat(),
            "decided_by": self.decided_by,
        }


def _request(row: Any) -> EnrollmentRequest:
    return EnrollmentRequest(
        id=row.id,
        device=row.device,
        key_hash=row.key_hash,
        platform=row.platform,
        runtime_version=row.runtime_version,
        source=row.source,
        requested_at=row.requested_at,
        last_seen_at=row.last_seen_at,
        status=row.status,
        decided_at=row.decided_at,
        decided_by=row.decided_by,
    )


def find_request(conn: Connection, device: str, key_hash: str) -> EnrollmentRequest | None:
    """The request of ``device`` made with the key hashing to ``key_hash``, if any."""
    t = enrollment_requests
    row = conn.execute(select(t).where(t.c.device == device, t.c.key_hash == key_hash)).first()
    return None if row is None else _request(row)


def note_request(
    conn: Connection,
    device: str,
    key_hash: str,
    *,
    platform: str,
    runtime_version: str | None,
    source: str | None,
    now: datetime,
) -> EnrollmentRequest:
    """Record (or refresh) the request of ``device`` with this key; returns it as stored."""
    t = enrollment_requests
    found = find_request(conn, device, key_hash)
    if found is not None:
        conn.execute(
            update(t)
            .where(t.c.id == found.id)
            .values(last_seen_at=now, source=source, runtime_version=runtime_version)
        )
    else:
        pending = conn.execute(
            select(t.c.id)
            .where(t.c.device == device, t.c.status == PENDING)
            .order_by(t.c.last_seen_at.desc(), t.c.id.desc())
        ).all()
        stale = [r.id for r in pending[MAX_PENDING - 1 :]]
        if stale:
            conn.execute(delete(t).where(t.c.id.in_(stale)))
        conn.execute(
            insert(t).values(
                device=device,
                key_hash=key_hash,
                platform=platform,
                runtime_version=runtime_version,
                source=source,
                requested_at=now,
                last_seen_at=now,
                status=PENDING,
            )
        )
    stored = find_request(conn, device, key_hash)
    assert stored is not None
    return stored


def forget_request(conn: Connection, request_id: int) -> None:
    """Delete a request (its approval was used)."""
    conn.execute(delete(enrollment_requests).where(enrollment_requests.c.id == request_id))


def list_requests(conn: Connection, device: str | None = None) -> list[EnrollmentRequest]:
    """Every request (of ``device`` when given), pending first, then by device and id."""
    t = enrollment_requests
    query = select(t).order_by(t.c.device, t.c.id)
    if device is not None:
        query = query.where(t.c.device == device)
    rows = [_request(r) for r in conn.execute(query)]
    return sorted(rows, key=lambda r: r.status != PENDING)


def decide_request(
    conn: Connection,
    device: str,
    *,
    approve: bool,
    now: datetime,
    by: str,
    request_id: int | None = None,
) -> EnrollmentRequest:
    """Approve or reject a request of ``device``: ``request_id``, or its only pending one.

    Raises ApprovalError when there is no such request, or several pending and
    no ``request_id``.
    """
    t = enrollment_requests
    if request_id is not None:
        row = conn.execute(select(t).where(t.c.id == request_id, t.c.device == device)).first()
        if row is None:
            raise ApprovalError(f"device {device!r} has no enrollment request {request_id}")
        chosen = _request(row)
    else:
        pending = [r for r in list_requests(conn, device) if r.status == PENDING]
        if not pending:
            raise ApprovalError(
                f"device {device!r} has no pending enrollment request "
                "(engine devices requests lists them)"
            )
        if len(pending) > 1:
            ids = ", ".join(str(r.id) for r in pending)
            raise ApprovalError(
                f"device {device!r} has {len(pending)} pending enrollment requests ({ids}): "
                "say which with --request (compare their source and key fingerprint)"
            )
        chosen = pending[0]
    status = APPROVED if approve else REJECTED
    conn.execute(
        update(t).where(t.c.id == chosen.id).values(status=status, decided_at=now, decided_by=by)
    )
    stored = find_request(conn, device, chosen.key_hash)
    assert stored is not None
    return stored
