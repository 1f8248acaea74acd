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
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, Response

from engine.errors import StoreError
from engine.instruments import instruments
from engine.server._checkin import count_checkin
from engine.server._device_db import (
    insert_events,
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
from engine.server._releases import KeysFile
from engine.server.invites import InviteError, redeem_invite
from engine.server.registry import DeviceRevokedError, enroll_device, get_device
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

_SHA256_RE = re.compile(r"^[0-9a-f]{64}\Z")
_VERSION_RE = re.compile(r"^[0-9A-Za-z.+_-]{1,100}\Z")

_AUTH: dict[int | str, dict[str, Any]] = {
    401: {"description": "no token, device not enrolled, or token revoked"},
    403: {"description": "the token belongs to another device"},
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

    @api.post(
        "/v1/enroll",
        response_model=None,
        responses={
            200: {"model": EnrollResponse},
            401: {"description": "wrong enrollment secret"},
            403: {
                "description": "device not in the inventory, revoked, or its invite code wrong, "
                "used or expired"
            },
            **_BODY,
        },
        openapi_extra=body_spec(EnrollRequest),
    )
    async def enroll(request: Request) -> Response:
        """Trade the device's invite code (or the fleet's enrollment secret) for a new device
        token (replacing any old one)."""
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
        if body.enrollment_secret is not None and not hmac.compare_digest(
            body.enrollment_secret.encode(), settings.enrollment_secret.encode()
        ):
            log.warning("enrollment of %s refused: wrong enrollment secret", body.device)
            refuse(401, "wrong enrollment secret")
        # Off the event loop: an unknown id may re-read the whole inventory.
        if not await anyio.to_thread.run_sync(_may_enroll, state, body.device):
            log.warning("enrollment of %s refused: not in the inventory", body.device)
            refuse(
                403,
                f"device {body.device!r} is not in the operator repo's inventory; add it "
                "there (or run engine serve --allow-unknown-devices)",
            )
        try:
            with store.write() as conn:  # one transaction: a refusal uses up no invite
                if body.invite_code is not None:
                    redeem_invite(conn, body.device, body.invite_code, clock())
                enrollment = enroll_device(
                    conn, body.device, body.platform, clock(), runtime_version=body.runtime_version
                )
        except (DeviceRevokedError, InviteError) as e:
            log.warning("enrollment of %s refused: %s", body.device, e)
            refuse(403, str(e))
        tokens.forget(body.device)
        return EnrollResponse(
            device=body.device, token=enrollment.token, poll_interval=state.poll_interval()
        )

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
        responses={**_AUTH, **_BODY},
        openapi_extra=body_spec(EventBatch),
    )
    async def events(device: str, request: Request) -> Response:
        """Store the device's step events."""
        await tokens.check_async(request.headers.get("authorization"), _device(device))
        body = await parse_body(request, EventBatch, limit)

        def store_events() -> None:
            with _stored(device), store.write() as conn:
                insert_events(conn, sql, device, body.events, clock())
                count_step_events(conn, sql, device, body.events)

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
