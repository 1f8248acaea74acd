"""The FastAPI application of `engine serve`: wires the device, operator and field routers.

The shared state lives in ``engine.server.state`` and the settings in
``engine.server.settings``; the routers import those, never this module.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.types import Receive, Scope, Send

from engine.server import (
    _admin_api,
    _bundles_api,
    _device_api,
    _field_api,
    _health,
    _install_api,
    _metrics,
    dashboard,
)
from engine.server._checkin import CheckinFastPath, checkin_device
from engine.server.settings import MAX_BODY_BYTES, Offer, OfferFunction, ServerSettings
from engine.server.state import ServerState
from fleetbase.clock import utc_now
from states.protocol import CheckinRequest, EnrollRequest, EventBatch, Heartbeat

__all__ = [
    "MAX_BODY_BYTES",
    "Offer",
    "OfferFunction",
    "ServerSettings",
    "ServerState",
    "create_app",
    "utc_now",
]


def create_app(settings: ServerSettings) -> FastAPI:
    """The ASGI application serving ``settings.store`` and the repo at ``settings.repo_root``."""
    state = ServerState(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        # Shutdown: the buffered (write-behind) reports reach the store.
        await anyio.to_thread.run_sync(state.close)

    app = _EngineApp(
        state,
        lifespan=lifespan,
        title=settings.title,
        summary="Device, operator and field-compatible APIs of the fleet rollout engine",
        version="1",
        docs_url=None,  # served by engine.server.dashboard from local assets
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.engine = state
    app.include_router(_device_api.router(state))
    app.include_router(_admin_api.router(state))
    app.include_router(_field_api.router(state))
    app.include_router(_bundles_api.router(state))
    app.include_router(_health.router(state))
    app.include_router(_install_api.router(state))
    app.include_router(dashboard.router(state, openapi_url="/openapi.json"))
    app.include_router(_metrics.router(state))
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
