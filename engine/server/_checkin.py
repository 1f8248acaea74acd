"""The check-in, the server's hot path: every device, every poll interval.

``Checkins.handle`` does the whole exchange on bytes: token check (cached),
body validation, then the database work queued to the worker's check-in
thread (``engine.server._checkin_db``: token lookup, the rollout offer, the
report written behind), the answer serialised with orjson. ``CheckinFastPath``
is an ASGI middleware that routes ``POST /v1/devices/{id}/checkin`` straight
to it, skipping the framework's routing and dependency machinery (measured:
about a third of the CPU per check-in); the FastAPI route with the same
handler stays for the OpenAPI document and any request the fast path passes on.

Nothing here touches the database on the event loop: a slow or locked store
delays check-ins, never the other requests.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from functools import lru_cache

import orjson
from fastapi import HTTPException
from pydantic import ValidationError
from starlette.types import Message, Receive, Scope, Send

from engine.instruments import instruments
from engine.rollouts.offers import Offer
from engine.server._auth import MISSING, DeviceTokens, bearer
from engine.server._checkin_db import CheckinDatabase, CheckinJob
from engine.server._configs import ServerConfigs
from engine.server._http import DEVICE_RE, error_body, refuse, validation_message
from states.protocol import FEATURE_CONFIG, CheckinRequest
from states.report import Report

__all__ = ["CheckinFastPath", "Checkins", "checkin_device", "count_checkin"]

log = logging.getLogger("engine.server")


class Checkins:
    """Answers check-ins for one server (see the module docstring)."""

    def __init__(
        self,
        *,
        tokens: DeviceTokens,
        clock: Callable[[], datetime],
        max_body_bytes: int,
        db: CheckinDatabase,
        poll_interval: Callable[[], float],
        configs: ServerConfigs | None = None,
    ) -> None:
        """Answer with the server's token cache, check-in database, clock and config source."""
        self.configs = configs
        self.tokens = tokens
        self.clock = clock
        self.limit = max_body_bytes
        self.db = db
        self.poll_interval = poll_interval

    async def handle(self, device: str, authorization: str | None, body: bytes) -> bytes:
        """The JSON answer to a check-in; raises HTTPException (4xx, 503) refusing it.

        A refused check-in changes nothing.
        """
        token = bearer(authorization)
        row = self.tokens.cached(device)
        if row is not MISSING:
            self.tokens.verify(device, token, row)
        try:
            request = CheckinRequest.model_validate_json(body)
        except ValidationError as e:
            refuse(*validation_message(CheckinRequest, e))
        now: datetime = self.clock()
        tx = request.transaction
        report = Report.model_construct(
            device=device,
            agent_version=request.agent_version,
            platform=request.platform,
            last_seen=now,
            runtime_version=request.runtime_version,
            known_good=request.known_good,
            last_result=None if tx is None else tx.result,
            python_version=request.python_version,
            os_version=request.os_version,
            components=request.components,
            config_digest=request.config_digest,
            features=_sorted_features(tuple(request.features)),
        )
        job = CheckinJob(
            device, token, row, request, report, now, asyncio.get_running_loop().create_future()
        )
        answer = await self.db.checkin(job)
        offer, runtime = answer.offer, answer.runtime
        interval = self.poll_interval()
        if offer is None and runtime is None:
            return b'{"plan":null,"release":null,"poll_interval":%.3f}' % interval
        doc: dict[str, object] = {"plan": None, "release": None, "poll_interval": interval}
        if offer is not None:
            config = await self._config(device, request, offer)
            if config is not _NO_CONFIG:
                log.info(
                    "device %s: offered %s %s",
                    device,
                    offer.plan.action.value,
                    offer.release.version,
                )
                doc["plan"] = offer.plan.model_dump(mode="json")
                doc["release"] = offer.release.model_dump(mode="json")
                if config is not None:
                    doc["config"] = config
        if runtime is not None:
            log.info("device %s: offered runtime %s", device, runtime.version)
            doc["runtime"] = runtime.model_dump(mode="json")
        return orjson.dumps(doc)

    async def _config(self, device: str, request: CheckinRequest, offer: Offer) -> object:
        """The offer's config bundle as JSON data, None when it has none, or ``_NO_CONFIG``
        when the plan needs one that cannot be given (the device then gets no plan)."""
        digest = offer.plan.config_digest
        if digest is None or offer.plan.desired is None:
            return None
        if self.configs is None or FEATURE_CONFIG not in request.features:
            # an older runtime cannot install config (nor parse "reconfigure")
            log.warning("device %s: its runtime cannot install managed config", device)
            return _NO_CONFIG
        bundle = await asyncio.to_thread(self.configs.bundle, device, offer.plan.desired, digest)
        return _NO_CONFIG if bundle is None else bundle.model_dump(mode="json")


@lru_cache(maxsize=64)
def _sorted_features(features: tuple[str, ...]) -> tuple[str, ...]:
    """A check-in's features as ``Report.features`` keeps them (sorted, once each)."""
    return tuple(sorted(set(features)))


#: ``Checkins._config``: the plan needs config that cannot be given.
_NO_CONFIG = object()


def count_checkin(status: int) -> None:
    """Count one check-in answered with HTTP ``status`` (``engine_checkins_total``)."""
    instruments().checkins.labels(str(status)).inc()


_PREFIX = "/v1/devices/"
_SUFFIX = "/checkin"
_JSON_HEADERS = [(b"content-type", b"application/json")]


def checkin_device(scope: Scope) -> str | None:
    """The device id when ``scope`` is ``POST /v1/devices/{device}/checkin``, else None."""
    path: str = scope.get("path", "")
    if (
        scope["type"] != "http"
        or scope["method"] != "POST"
        or not path.startswith(_PREFIX)
        or not path.endswith(_SUFFIX)
    ):
        return None
    device = path[len(_PREFIX) : -len(_SUFFIX)]
    return device if device and "/" not in device else None


class CheckinFastPath:
    """Answers ``POST /v1/devices/{device}/checkin`` at the ASGI level (see module docstring)."""

    def __init__(self, checkins: Checkins) -> None:
        """Answer with ``checkins``."""
        self.checkins = checkins

    async def __call__(self, scope: Scope, receive: Receive, send: Send, device: str) -> None:
        """Answer the check-in of ``device`` (found by ``checkin_device``)."""
        authorization: str | None = None
        declared: int | None = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
        status, headers, content = 200, _JSON_HEADERS, b""
        try:
            if declared is not None and declared < 0:
                refuse(400, "Content-Length is not a number")
            limit = self.checkins.limit
            if declared is not None and declared > limit:
                refuse(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes")
            if not DEVICE_RE.match(device):
                refuse(404, "not a device id: letters, digits and . _ : - only, at most 200")
            body = await _read(receive, limit)
            content = await self.checkins.handle(device, authorization, body)
        except HTTPException as e:
            status = e.status_code
            content = orjson.dumps(error_body(e))
            headers = _JSON_HEADERS + [
                (k.lower().encode(), v.encode()) for k, v in (e.headers or {}).items()
            ]
        except Exception:
            log.exception("check-in of %s failed", device)
            status, content = 500, b'{"detail":"internal server error"}'
        count_checkin(status)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*headers, (b"content-length", str(len(content)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": content})


async def _read(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message: Message = await receive()
        if message["type"] != "http.request":
            refuse(400, "the client went away before sending its body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            refuse(413, f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
