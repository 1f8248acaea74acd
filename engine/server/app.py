"""The FastAPI application of `engine serve`: wires the device, operator and field routers.

The shared state lives in ``engine.server.state`` and the settings in
``engine.server.settings``; the routers import those, never this module.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import SQLAlchemyError
from starlette.types import Receive, Scope, Send

from engine.errors import StoreError
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
from engine.server._http import Refusal, error_body
from engine.server._openapi import complete_openapi
from engine.server.settings import MAX_BODY_BYTES, Offer, OfferFunction, ServerSettings
from engine.server.state import ServerState
from fleetbase.clock import utc_now

__all__ = [
    "MAX_BODY_BYTES",
    "Offer",
    "OfferFunction",
    "ServerSettings",
    "ServerState",
    "create_app",
    "utc_now",
]

log = logging.getLogger("engine.server")


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
    app.add_exception_handler(Refusal, _refusal)
    app.add_exception_handler(StoreError, _store_unavailable)
    app.add_exception_handler(SQLAlchemyError, _store_unavailable)
    app.add_exception_handler(sqlite3.Error, _store_unavailable)
    app.add_exception_handler(psycopg.Error, _store_unavailable)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    _publish_openapi(app)
    return app


async def _refusal(request: Request, exc: Exception) -> Response:
    """A refusal with a machine-readable code: ``{"detail": ..., "code": ...}``."""
    assert isinstance(exc, Refusal)
    return JSONResponse(error_body(exc), status_code=exc.status_code, headers=exc.headers)


async def _store_unavailable(request: Request, error: Exception) -> Response:
    """Any route whose store work failed answers 503 with Retry-After, never 500."""
    log.error("%s %s: the store failed: %s", request.method, request.url.path, error)
    return JSONResponse(
        {"detail": "the server cannot reach its store; try again later"},
        status_code=503,
        headers={"Retry-After": "5"},
    )


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


def _publish_openapi(app: FastAPI) -> None:
    """The OpenAPI document, completed by ``_openapi`` (bodies read by hand, every answer)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                routes=app.routes,
            )
            app.openapi_schema = complete_openapi(schema)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


async def _invalid_request(request: Request, error: Exception) -> Response:
    """A path or query value FastAPI refused: 422 naming it, in the usual error body."""
    assert isinstance(error, RequestValidationError)
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()[:10]
    )
    return JSONResponse({"detail": problems or "invalid request"}, status_code=422)
