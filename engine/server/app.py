"""The FastAPI application of `engine serve`: device, operator and field-compatible APIs."""

from __future__ import annotations

import random
from collections.abc import Callable, Container
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from sqlalchemy import Connection
from starlette.types import Receive, Scope, Send

from engine.rollouts.offers import Offer, offer_for_device
from engine.server._auth import DeviceTokens
from engine.server._checkin import CheckinFastPath, Checkins, LoopConnection, checkin_device
from engine.server._device_db import DeviceSql, lookup_token
from engine.server._releases import ArtifactIndex, ReleaseSource, read_releases_table
from engine.server.clock import utc_now
from engine.store import Store
from fleetbase.version import Version
from states.protocol import CheckinRequest, EnrollRequest, EventBatch, Heartbeat
from states.report import Report

__all__ = ["Offer", "OfferFunction", "ServerSettings", "ServerState", "create_app", "utc_now"]

#: Largest request body accepted (bytes); a check-in is well under 2 KiB.
MAX_BODY_BYTES = 64 * 1024


#: ``offer_for_device(conn, device, report, now)``: the device's plan, or None.
OfferFunction = Callable[[Connection, str, Report, datetime], Offer | None]


@dataclass
class ServerSettings:
    """How the server runs. ``known_devices`` None: any device id may enroll."""

    store: Store
    repo_root: Path
    admin_token: str
    enrollment_secret: str
    known_devices: Container[str] | None = None
    poll_interval: float = 60.0
    poll_jitter: float = 0.1
    field_release: Version | None = None
    clock: Callable[[], datetime] = utc_now
    max_body_bytes: int = MAX_BODY_BYTES
    token_cache_seconds: float = 5.0
    online_after: float | None = None
    offer: OfferFunction | None = None
    title: str = "engine serve"
    runtime_bundles: Path | None = None
    #: public keys the device installer pins (engine.yaml trusted_keys); the URL it names
    install_keys: list[str] = field(default_factory=list)
    public_url: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def runtime_bundles_dir(self) -> Path:
        """Where the runtime bundles are (default ``<repo>/.engine/runtime-bundles``)."""
        return self.runtime_bundles or self.repo_root / ".engine" / "runtime-bundles"

    @property
    def online_seconds(self) -> float:
        """A device seen within this many seconds counts as online (default 3 poll intervals)."""
        return self.online_after if self.online_after is not None else 3 * self.poll_interval


class ServerState:
    """What the routes share: settings, the store, caches."""

    def __init__(self, settings: ServerSettings) -> None:
        """Prepare statements and caches for ``settings``."""
        self.settings = settings
        self.store = settings.store
        self.sql = DeviceSql(settings.store.engine.dialect.name)
        self.offer: OfferFunction = settings.offer or offer_for_device
        self.tokens = DeviceTokens(self._lookup_token, settings.token_cache_seconds)
        self.releases = ReleaseSource(settings.repo_root, self._read_releases)
        self.artifacts = ArtifactIndex(settings.repo_root / "artifacts", self.releases)
        self.loop_db = LoopConnection(settings.store)
        self.checkins = Checkins(self)
        self._random = random.Random()

    def poll_interval(self) -> float:
        """The configured poll interval with +-``poll_jitter`` applied, in seconds."""
        s = self.settings
        return round(s.poll_interval * (1 + s.poll_jitter * (2 * self._random.random() - 1)), 3)

    def _lookup_token(self, device: str) -> tuple[str, bool] | None:
        with self.loop_db.read() as conn:
            return lookup_token(conn, self.sql, device)

    def _read_releases(self, version: str | None) -> list[tuple[str, int, bytes, bytes | None]]:
        with self.store.read() as conn:
            return read_releases_table(conn, version)


def create_app(settings: ServerSettings) -> FastAPI:
    """The ASGI application serving ``settings.store`` and the repo at ``settings.repo_root``."""
    from engine.server import (
        _admin_api,
        _bundles_api,
        _dashboard,
        _device_api,
        _field_api,
        _install_api,
    )

    state = ServerState(settings)
    app = _EngineApp(
        state,
        title=settings.title,
        summary="Device, operator and field-compatible APIs of the fleet rollout engine",
        version="1",
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.engine = state
    app.include_router(_device_api.router(state))
    app.include_router(_admin_api.router(state))
    app.include_router(_field_api.router(state))
    app.include_router(_bundles_api.router(state))
    app.include_router(_dashboard.router(state))
    app.include_router(_install_api.router(state))
    _publish_body_schemas(app)
    return app


class _EngineApp(FastAPI):
    """FastAPI, with check-ins answered before its middleware and routing (the hot path)."""

    def __init__(self, state: ServerState, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._fast_checkin = CheckinFastPath(state.checkins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        device = checkin_device(scope)
        if device is not None:
            await self._fast_checkin(scope, receive, send, device)
        else:
            await super().__call__(scope, receive, send)


def _publish_body_schemas(app: FastAPI) -> None:
    """Add the request models (read by hand, not by FastAPI) to the OpenAPI components."""
    models = (CheckinRequest, EnrollRequest, EventBatch, Heartbeat)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                routes=app.routes,
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                body = model.model_json_schema(ref_template="#/components/schemas/{model}")
                for name, definition in body.pop("$defs", {}).items():
                    components.setdefault(name, definition)
                components.setdefault(model.__name__, body)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def body_spec(model: type[Any]) -> dict[str, Any]:
    """``openapi_extra`` declaring a JSON request body of ``model``."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
            },
        }
    }
