"""``/healthz``: the load balancer's health check."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import Response

from engine.errors import StoreError
from engine.server._http import json_response
from engine.server.state import ServerState

__all__ = ["router"]

log = logging.getLogger("engine.server")


def router(state: ServerState) -> APIRouter:
    """The load balancer's health check."""
    api = APIRouter(tags=["health"])

    @api.get(
        "/healthz",
        response_model=None,
        responses={503: {"description": "the store cannot be read"}},
        tags=["health"],
    )
    async def healthz() -> Response:
        """200 when this replica can read its store (for load balancers), else 503."""
        try:
            with state.store.read() as conn:
                conn.exec_driver_sql("SELECT 1").scalar()
        except StoreError as e:
            log.error("health check: %s", e)
            return json_response({"status": "store unavailable"}, status=503)
        return json_response({"status": "ok"})

    return api
