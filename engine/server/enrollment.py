"""Who may enroll a device id, and with which proof (device identity, ADR 0010).

A device id that never enrolled is admitted with its single-use invite code or
the fleet's enrollment secret. An id with an active credential is enrolled
again (its token replaced) only with proof that the caller is that device or
that an operator agreed:

- the device's current token, or the device key it proved when it enrolled;
- an invite code the operator issued for it (``engine devices invite``);
- an operator's approval of this enrollment request (``engine devices approve``).

The fleet secret alone only files a request and answers "pending approval",
so a device that knows the fleet secret (every device does) cannot take over
another's identity. A revoked id is refused (``engine devices enroll``
readmits it). Refusals carry a machine-readable ``code``.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection

from engine.server.approvals import APPROVED, REJECTED, forget_request, note_request
from engine.server.credentials import hash_token
from engine.server.errors import ServerError
from engine.server.invites import InviteError, redeem_invite
from engine.server.registry import DeviceRevokedError, Enrollment, enroll_device, get_device
from states.protocol import EnrollRequest

__all__ = ["EnrollmentRefusedError", "admit"]


class EnrollmentRefusedError(ServerError):
    """An enrollment that is refused: HTTP ``status`` and a stable ``code`` the runtime reads."""

    def __init__(self, message: str, status: int, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True)
class _Proofs:
    invite: bool
    token: bool
    key: bool


def _same(digest: str | None, secret: str | None) -> bool:
    return (
        digest is not None
        and secret is not None
        and hmac.compare_digest(digest, hash_token(secret))
    )


def admit(
    conn: Connection, body: EnrollRequest, now: datetime, *, source: str | None
) -> Enrollment:
    """Enroll ``body.device`` when its proof allows it (see the module docstring).

    The fleet secret, when sent, was checked by the caller. Raises
    EnrollmentRefusedError (403: invite_invalid, revoked, approval_pending,
    enrollment_rejected, already_enrolled) and changes nothing then, except
    recording a pending request.
    """
    device = body.device
    record = get_device(conn, device)
    key_hash = None if body.device_key is None else hash_token(body.device_key)
    if body.invite_code is not None:
        try:
            redeem_invite(conn, device, body.invite_code, now)
        except InviteError as e:
            raise EnrollmentRefusedError(str(e), 403, "invite_invalid") from e
    if record is not None and record.revoked_at is not None:
        raise EnrollmentRefusedError(
            f"device {device!r} was revoked at {record.revoked_at.isoformat()}; an operator "
            "must enroll it again (engine devices enroll)",
            403,
            "revoked",
        )
    proofs = _Proofs(
        invite=body.invite_code is not None,
        token=record is not None and _same(record.token_hash, body.token),
        key=record is not None and _same(record.key_hash, body.device_key),
    )
    secret = body.enrollment_secret is not None  # checked by the caller
    if not (proofs.invite or proofs.token or proofs.key or secret):
        raise EnrollmentRefusedError(
            f"this token is not valid for device {device!r}: enroll with its invite code or "
            "the enrollment secret",
            401,
            "invalid_token",
        )
    if record is None:
        how = "its invite code" if proofs.invite else "the fleet enrollment secret"
    elif proofs.invite:
        how = "an invite code (engine devices invite)"
    elif proofs.token:
        how = "its own current token"
    elif proofs.key:
        how = "its device key"
    else:
        how = _approved(conn, body, key_hash, now, source)
    try:
        return enroll_device(
            conn,
            device,
            body.platform,
            now,
            runtime_version=body.runtime_version,
            key_hash=key_hash,
            how=f"enrollment with {how}",
        )
    except DeviceRevokedError as e:
        raise EnrollmentRefusedError(str(e), 403, "revoked") from e


def _approved(
    conn: Connection, body: EnrollRequest, key_hash: str | None, now: datetime, source: str | None
) -> str:
    """How an already-enrolled id proved itself by approval; else the refusal to raise."""
    device = body.device
    if key_hash is None:
        raise EnrollmentRefusedError(
            f"device {device!r} is already enrolled: enrolling it again needs its current "
            "token, its device key, an invite code (engine devices invite "
            f"{device}) or an operator's approval, which needs a runtime that sends a "
            "device key",
            403,
            "already_enrolled",
        )
    request = note_request(
        conn,
        device,
        key_hash,
        platform=body.platform.value,
        runtime_version=body.runtime_version,
        source=source,
        now=now,
    )
    if request.status == APPROVED:
        forget_request(conn, request.id)
        return f"operator approval ({request.decided_by}) of request {request.id}"
    if request.status == REJECTED:
        raise EnrollmentRefusedError(
            f"the enrollment request {request.id} of device {device!r} was rejected by "
            f"{request.decided_by} at {request.decided_at}; ask the operator",
            403,
            "enrollment_rejected",
        )
    raise EnrollmentRefusedError(
        f"device {device!r} is already enrolled; this enrollment (request {request.id}, key "
        f"{key_hash[:16]}) awaits an operator's approval: engine devices approve {device}",
        403,
        "approval_pending",
    )
