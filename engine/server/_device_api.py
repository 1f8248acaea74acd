"""The device API (``states.protocol``): enrollment, check-in, events, heartbeats, releases.

The check-in is the hot path (engine.server._checkin): its database work runs
in batches on the worker's check-in thread. The other device routes do theirs
in the thread pool: nothing here blocks the event loop on the store.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, Response

from engine.errors import StoreError
from engine.instruments import instruments
from engine.server._checkin import count_checkin
from engine.server._device_db import (
    insert_events,
    prune_events,
    read_heartbeat,
    upsert_heartbeat,
)
from engine.server._http import (
    DEVICE_RE,
    body_spec,
    file_response,
    json_response,
    parse_body,
    read_body,
    refuse,
)
from engine.server._outcomes import count_step_events
from engine.server._quotas import EventQuota
from engine.server._releases import KeysFile
from engine.server._throttle import FailureThrottle
from engine.server.enrollment import EnrollmentRefusedError, admit
from engine.server.registry import get_device
from engine.server.state import ServerState
from engine.store.schema import reports
from states.keyring import KEYS_PATH
from states.protocol import (
    CheckinRequest,
    CheckinResponse,
    EnrollRequest,
    EnrollResponse,
    EventBatch,
    Heartbeat,
)

__all__ = ["router"]

log = logging.getLogger("engine.server")

#: Seconds between two deletions of events past their retention (by arrival time, a batch
#: at a time: see prune_events).
_PRUNE_EVERY = 60.0
_UNAVAILABLE: dict[str, Any] = {"description": "the store is unavailable; see Retry-After"}

_SHA256_RE = re.compile(r"^[0-9a-f]{64}\Z")
_VERSION_RE = re.compile(r"^[0-9A-Za-z.+_-]{1,100}\Z")

#: Failed enrollment proofs allowed per device id and per client address in a window.
ENROLL_FAILURES_PER_ID = 5
ENROLL_FAILURES_PER_SOURCE = 20
ENROLL_FAILURE_WINDOW = 60.0

_AUTH: dict[int | str, dict[str, Any]] = {
    401: {
        "description": "no token, or not this device's current token (code: missing_token, "
        "invalid_token, token_replaced, token_revoked); an unknown device id gets the same "
        "answer as a wrong token"
    },
}
_BODY: dict[int | str, dict[str, Any]] = {
    400: {"description": "the body is not JSON"},
    413: {"description": "the body exceeds the size limit"},
    422: {"description": "the body is not the expected message"},
}


def _device(device: str) -> str:
    if not DEVICE_RE.match(device):
        refuse(404, "not a device id: letters, digits and . _ : - only, at most 200")
    return device


def router(state: ServerState) -> APIRouter:
    """The device API's routes, bound to ``state``."""
    api = APIRouter(tags=["devices"])
    settings = state.settings
    store = state.store
    sql = state.sql
    tokens = state.tokens
    clock = settings.clock
    limit = settings.max_body_bytes
    checkins = state.checkins
    throttles = (
        FailureThrottle(ENROLL_FAILURES_PER_ID, ENROLL_FAILURE_WINDOW),
        FailureThrottle(ENROLL_FAILURES_PER_SOURCE, ENROLL_FAILURE_WINDOW),
    )
    quota = EventQuota(settings.events_per_minute, settings.events_burst)
    retention = timedelta(seconds=settings.event_retention_seconds)
    pruned_at = [time.monotonic() - _PRUNE_EVERY]

    @api.post(
        "/v1/enroll",
        response_model=None,
        responses={
            200: {"model": EnrollResponse},
            401: {
                "description": "wrong enrollment secret (code: wrong_secret), or only a token "
                "that is not the device's (invalid_token)"
            },
            403: {
                "description": "device not in the inventory (unknown_device), revoked "
                "(revoked), invite code wrong, used or expired (invite_invalid), or an "
                "enrolled id asking again: approval_pending, enrollment_rejected, "
                "already_enrolled"
            },
            429: {"description": "too many failed attempts for this id or address"},
            **_BODY,
        },
        openapi_extra=body_spec(EnrollRequest),
    )
    async def enroll(request: Request) -> Response:
        """Trade the device's invite code, the fleet's enrollment secret or its current token
        for a new device token. An id that already has a token is enrolled again only with
        proof that the caller is that device, or with an operator's approval."""
        try:
            answer = await _enroll(request)
        except HTTPException as e:
            enrollments.labels(str(e.status_code)).inc()
            raise
        enrollments.labels("enrolled").inc()
        return Response(answer.model_dump_json(), media_type="application/json")

    enrollments = instruments().enrollments

    async def _enroll(request: Request) -> EnrollResponse:
        body = await parse_body(request, EnrollRequest, limit)
        source = request.client.host if request.client is not None else None
        keys = (f"id:{body.device}", f"from:{source}")
        for key, throttle in zip(keys, throttles, strict=True):
            wait = throttle.blocked(key)
            if wait is not None:
                refuse(
                    429,
                    "too many failed enrollment attempts for this device id or address; "
                    f"try again in {wait:.0f}s",
                    {"Retry-After": str(max(1, round(wait)))},
                    code="throttled",
                )
        if body.enrollment_secret is not None and not hmac.compare_digest(
            body.enrollment_secret.encode(), settings.enrollment_secret.encode()
        ):
            _failed(keys, "wrong enrollment secret", body.device, source)
            refuse(401, "wrong enrollment secret", code="wrong_secret")
        # Off the event loop: an unknown id may re-read the whole inventory.
        if not await anyio.to_thread.run_sync(_may_enroll, state, body.device):
            log.warning("enrollment of %s refused: not in the inventory", body.device)
            refuse(
                403,
                f"device {body.device!r} is not in the operator repo's inventory; add it "
                "there (or run engine serve --allow-unknown-devices)",
                code="unknown_device",
            )
        refused: EnrollmentRefusedError | None = None
        try:
            with store.write() as conn:  # one transaction: a refusal uses up no invite
                try:
                    enrollment = admit(conn, body, clock(), source=source)
                except EnrollmentRefusedError as e:
                    if e.code != "approval_pending":
                        raise
                    refused = e  # committed: the request is kept for the operator
        except EnrollmentRefusedError as e:
            if e.code in ("invite_invalid", "invalid_token"):
                _failed(keys, str(e), body.device, source)
            else:
                log.warning("enrollment of %s refused: %s", body.device, e)
            refuse(e.status, str(e), code=e.code)
        except StoreError as e:
            log.error("enrollment of %s not stored: %s", body.device, e)
            refuse(503, "the server cannot reach its store; try again later", {"Retry-After": "5"})
        if refused is not None:
            log.warning("enrollment of %s from %s pending: %s", body.device, source, refused)
            refuse(refused.status, str(refused), code=refused.code)
        tokens.forget(body.device)
        return EnrollResponse(
            device=body.device, token=enrollment.token, poll_interval=state.poll_interval()
        )

    def _failed(keys: tuple[str, str], why: str, device: str, source: str | None) -> None:
        counts = [t.failed(k) for k, t in zip(keys, throttles, strict=True)]
        if any(c == t.limit for c, t in zip(counts, throttles, strict=True)):
            log.warning(
                "enrollment of %s from %s refused: %s; further attempts throttled",
                device,
                source,
                why,
            )
        elif all(c < t.limit for c, t in zip(counts, throttles, strict=True)):
            log.warning("enrollment of %s from %s refused: %s", device, source, why)

    @api.post(
        "/v1/devices/{device}/checkin",
        response_model=None,
        responses={200: {"model": CheckinResponse}, **_AUTH, **_BODY},
        openapi_extra=body_spec(CheckinRequest),
    )
    async def checkin(device: str, request: Request) -> Response:
        """Record the device's report; answer its plan (or none) and the next poll interval."""
        _device(device)
        body = await read_body(request, limit)
        try:
            content = await checkins.handle(device, request.headers.get("authorization"), body)
        except HTTPException as e:
            count_checkin(e.status_code)
            raise
        count_checkin(200)
        return Response(content, media_type="application/json")

    @api.post(
        "/v1/devices/{device}/events",
        status_code=204,
        response_model=None,
        responses={
            **_AUTH,
            **_BODY,
            429: {"description": "the device's event quota is used up; see Retry-After"},
            503: _UNAVAILABLE,
        },
        openapi_extra=body_spec(EventBatch),
    )
    async def events(device: str, request: Request) -> Response:
        """Store the device's step events (within its quota; the oldest beyond the
        retention are deleted)."""
        await tokens.check_async(request.headers.get("authorization"), _device(device))
        body = await parse_body(request, EventBatch, limit)
        wait = quota.take(device, len(body.events))
        if wait:
            refuse(
                429,
                f"device {device!r} posted more step events than its quota "
                f"({settings.events_per_minute} a minute); try again later",
                {"Retry-After": EventQuota.retry_after(wait)},
            )
        now = clock()
        cutoff = None
        if time.monotonic() - pruned_at[0] >= _PRUNE_EVERY:
            pruned_at[0] = time.monotonic()
            cutoff = now - retention

        def store_events() -> None:
            with _stored(device), store.write() as conn:
                insert_events(conn, sql, device, body.events, now)
                count_step_events(conn, sql, device, body.events)
                prune_events(conn, sql, device, settings.events_kept_per_device, cutoff)

        await anyio.to_thread.run_sync(store_events)
        return Response(status_code=204)

    @api.post(
        "/v1/devices/{device}/heartbeat",
        status_code=204,
        response_model=None,
        responses={**_AUTH, **_BODY},
        openapi_extra=body_spec(Heartbeat),
    )
    async def post_heartbeat(device: str, request: Request) -> Response:
        """Keep the agent's heartbeat as the device's latest."""
        await tokens.check_async(request.headers.get("authorization"), _device(device))
        body = await parse_body(request, Heartbeat, limit)

        def store_heartbeat() -> None:
            with _stored(device), store.write() as conn:
                upsert_heartbeat(conn, sql, device, body, clock())

        await anyio.to_thread.run_sync(store_heartbeat)
        return Response(status_code=204)

    @api.get(
        "/v1/devices/{device}/heartbeat",
        response_model=None,
        responses={200: {"model": Heartbeat}, 404: {"description": "no heartbeat yet"}, **_AUTH},
    )
    async def get_heartbeat(device: str, request: Request) -> Response:
        """The server's record of the device's latest heartbeat."""
        await tokens.check_async(request.headers.get("authorization"), _device(device))

        def read_beat() -> Heartbeat | None:
            with _stored(device), store.read() as conn:
                return read_heartbeat(conn, sql, device)

        beat = await anyio.to_thread.run_sync(read_beat)
        if beat is None:
            refuse(404, f"no heartbeat recorded for device {device!r}")
        return Response(beat.model_dump_json(), media_type="application/json")

    @api.get("/v1/releases", tags=["releases"])
    async def release_list() -> Response:
        """Every release served (version, serial, signed), oldest serial first: what a
        runtime compares an agent's files with to adopt it."""
        known = await anyio.to_thread.run_sync(state.releases.all)
        rows = [
            {"version": r.version, "serial": r.serial, "signed": r.signature is not None}
            for r in known
        ]
        return json_response({"releases": rows})

    @api.get(
        "/v1/releases/{version}/manifest",
        response_class=Response,
        responses={200: {"content": {"application/octet-stream": {}}}, 404: {}},
        tags=["releases"],
    )
    async def manifest(version: str) -> Response:
        """The release's manifest, the exact bytes that were signed."""
        release = state.releases.get(version) if _VERSION_RE.match(version) else None
        if release is None:
            refuse(404, f"no release {version!r}")
        etag = hashlib.sha256(release.manifest_bytes).hexdigest()
        return Response(
            release.manifest_bytes,
            media_type="application/octet-stream",
            headers={"ETag": f'"{etag}"'},
        )

    @api.get(
        "/v1/releases/{version}/signature",
        response_class=Response,
        responses={200: {"content": {"application/octet-stream": {}}}, 404: {}},
        tags=["releases"],
    )
    async def signature(version: str) -> Response:
        """The detached ed25519 signature of the release's manifest."""
        release = state.releases.get(version) if _VERSION_RE.match(version) else None
        if release is None:
            refuse(404, f"no release {version!r}")
        if release.signature is None:
            refuse(404, f"release {version} has no signature (engine release sign)")
        return Response(release.signature, media_type="application/octet-stream")

    keys_file = KeysFile(state.settings.repo_root)

    def keys_or_404() -> tuple[bytes, bytes]:
        content = keys_file.read()
        if content is None:
            refuse(404, "no keys document: the operator repo has no keys/keys.json(.sig)")
        return content

    @api.get(
        KEYS_PATH,
        response_class=Response,
        responses={200: {"content": {"application/json": {}}}, 404: {}},
        tags=["releases"],
    )
    async def keys_document() -> Response:
        """The root-signed list of release signing keys (``engine keys``), exact bytes."""
        document = keys_or_404()[0]
        etag = hashlib.sha256(document).hexdigest()
        return Response(document, media_type="application/json", headers={"ETag": f'"{etag}"'})

    @api.get(
        KEYS_PATH + "/signature",
        response_class=Response,
        responses={200: {"content": {"application/json": {}}}, 404: {}},
        tags=["releases"],
    )
    async def keys_signature() -> Response:
        """The detached root signatures of the keys document."""
        return Response(keys_or_404()[1], media_type="application/json")

    @api.get(
        "/v1/artifacts/{sha256}",
        response_class=FileResponse,
        responses={
            200: {"content": {"application/octet-stream": {}}},
            206: {"description": "the requested byte range (Range: bytes=START-END)"},
            404: {},
            416: {"description": "the range lies outside the file"},
        },
        tags=["releases"],
    )
    async def artifact(sha256: str) -> Response:
        """A release file by its sha256, with HTTP Range support; ETag is the sha256."""
        return await serve_artifact(state, sha256)

    return api


async def serve_artifact(state: ServerState, sha256: str) -> Response:
    """The artifact file declared with ``sha256`` (404 when none, 500 when it changed on disk)."""
    if not _SHA256_RE.match(sha256) or not state.artifacts.candidates(sha256):
        refuse(404, f"no artifact with sha256 {sha256[:80]!r}")
    path = await anyio.to_thread.run_sync(state.artifacts.find, sha256)
    if path is None:
        log.error("no file on the server hashes to %s any more: artifact not served", sha256)
        refuse(500, f"the artifact file for {sha256} changed on the server; tell the operator")
    return file_response(path, "application/octet-stream", sha256, immutable=True)


@contextmanager
def _stored(device: str) -> Iterator[None]:
    """Turn a store failure into 503 with Retry-After (the device tries again later)."""
    try:
        yield
    except StoreError as e:
        log.error("request of device %s not stored: %s", device, e)
        refuse(503, "the server cannot reach its store; try again later", {"Retry-After": "5"})


def _may_enroll(state: ServerState, device: str) -> bool:
    """Whether ``device`` may enroll: any id, or one of the inventory's or the server's."""
    known = state.settings.known_devices
    if known is None or device in known:
        return True
    with state.store.read() as conn:
        if get_device(conn, device) is not None:
            return True
        row = conn.execute(reports.select().where(reports.c.device == device)).first()
        return row is not None
