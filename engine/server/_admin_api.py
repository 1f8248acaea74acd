"""The operator API under ``/v1/admin``: devices, rollouts, fleet status (admin token)."""

from __future__ import annotations

import dataclasses
import hmac
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from engine.rollouts import (
    DeviceState,
    RolloutAction,
    RolloutNotFoundError,
    RolloutStateError,
    act_on_rollout,
    fleet_status,
    resolve_rollout,
    rollout_devices_status,
    rollout_status,
)
from engine.rollouts.errors import DeviceNotFoundError
from engine.rollouts.forensics import DeviceDetail, RolloutDevicesPage
from engine.rollouts.performance import release_performance
from engine.rollouts.status import RolloutStatus
from engine.server._http import json_response, refuse
from engine.server.registry import list_devices, revoke_device
from engine.server.state import ServerState
from engine.service.forensics import read_device, read_rollout_devices

__all__ = ["router"]

log = logging.getLogger("engine.server")


_bearer = HTTPBearer(auto_error=False, description="the admin token (.engine/admin.token)")


def _jsonable(value: Any) -> Any:
    """Rollout results as JSON-ready data, whatever shape the rollout module returns."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def router(state: ServerState) -> APIRouter:
    """The operator routes, bound to ``state``."""
    settings = state.settings

    def admin(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        if credentials is None or credentials.scheme.lower() != "bearer":
            refuse(
                401,
                "missing credentials: send 'Authorization: Bearer <admin token>'",
                {"WWW-Authenticate": "Bearer"},
            )
        if not hmac.compare_digest(credentials.credentials.encode(), settings.admin_token.encode()):
            refuse(403, "this token is not the admin token")

    api = APIRouter(
        prefix="/v1/admin",
        tags=["operator"],
        dependencies=[Depends(admin)],
        responses={401: {"description": "no admin token"}, 403: {"description": "wrong token"}},
    )

    @api.get("/devices", response_model=None)
    async def devices() -> Response:
        """Every device: platform, version, last check-in, online or offline, revocation."""
        now = settings.clock()
        with state.store.read() as conn:
            rows = list_devices(conn)
        return json_response([d.as_json(now, settings.online_seconds) for d in rows])

    @api.get(
        "/devices/{device}",
        response_model=DeviceDetail,
        responses={404: {"description": "no such device"}},
    )
    async def device(device: str) -> DeviceDetail:
        """One device: report, heartbeat, transaction, rollouts and its step-event timeline."""
        try:
            return read_device(
                state.store, device, now=settings.clock(), online_within=settings.online_seconds
            )
        except DeviceNotFoundError as e:
            refuse(404, str(e))

    @api.post("/devices/{device}/revoke", response_model=None, responses={404: {}})
    async def revoke(device: str) -> Response:
        """Revoke the device's token at once; it cannot enroll again without an operator."""
        with state.store.write() as conn:
            known = revoke_device(conn, device, settings.clock())
        state.tokens.forget(device)
        if not known:
            refuse(404, f"device {device!r} never enrolled")
        return json_response({"device": device, "revoked": True})

    @api.get("/rollouts", response_model=None)
    async def rollouts() -> Response:
        """The newest rollouts with their waves and device counts (superseded ones left out)."""
        with state.store.read() as conn:
            found = rollout_status(conn, now=settings.clock())
        return json_response(_jsonable(found))

    @api.get("/rollouts/{rollout}", response_model=None, responses={404: {}})
    async def rollout(rollout: str) -> Response:
        """One rollout (number or group@release): waves, counts and its devices."""
        try:
            with state.store.read() as conn:
                rollout_id = resolve_rollout(conn, rollout)
                found = rollout_status(conn, now=settings.clock(), rollout_id=rollout_id)
                devices = rollout_devices_status(conn, rollout_id, limit=10_000)
        except RolloutNotFoundError as e:
            refuse(404, str(e))
        body = _jsonable(found[0])
        body["devices"] = _jsonable(devices)
        return json_response(body)

    @api.get(
        "/rollouts/{rollout}/devices",
        response_model=RolloutDevicesPage,
        responses={404: {"description": "no such rollout"}},
    )
    async def rollout_devices(
        rollout: str,
        device_state: Annotated[
            list[DeviceState] | None,
            Query(alias="state", description="only devices in these states (repeatable)"),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    ) -> RolloutDevicesPage:
        """A page of the rollout's devices by state, each with its reason and last step."""
        try:
            return read_rollout_devices(
                state.store,
                rollout,
                states=device_state or (),
                limit=limit,
                offset=offset,
                now=settings.clock(),
            )
        except RolloutNotFoundError as e:
            refuse(404, str(e))

    @api.post(
        "/rollouts/{rollout}/{action}",
        response_model=RolloutStatus,
        responses={
            404: {"description": "no such rollout"},
            409: {"description": "the rollout's state does not allow it"},
        },
    )
    async def act(rollout: str, action: RolloutAction) -> RolloutStatus:
        """Pause, resume or abort a rollout."""
        now = settings.clock()
        try:
            with state.store.write() as conn:
                rollout_id = resolve_rollout(conn, rollout)
                act_on_rollout(conn, rollout_id, action, now, by="operator API")
                found = rollout_status(conn, now=now, rollout_id=rollout_id)
        except RolloutNotFoundError as e:
            refuse(404, str(e))
        except RolloutStateError as e:
            refuse(409, str(e))
        log.info("rollout %s: %s by the operator API", rollout, action.value)
        return found[0]

    @api.get("/performance", response_model=None)
    def performance() -> Response:
        """The agent's CPU % and memory per release (median and p95 over devices) and the
        change against the release before on the same devices."""
        with state.store.read() as conn:
            rows = release_performance(conn)
        return json_response({"releases": _jsonable(rows)})

    @api.get("/status", response_model=None)
    async def status() -> Response:
        """Fleet status: devices online and offline, versions, and the rollouts."""
        now = settings.clock()
        with state.store.read() as conn:
            rows = [d.as_json(now, settings.online_seconds) for d in list_devices(conn)]
            fleet = fleet_status(conn, now=now)
        return json_response(
            {
                "time": now.isoformat(),
                "devices": len(rows),
                "enrolled": sum(d["enrolled"] for d in rows),
                "revoked": sum(d["revoked"] for d in rows),
                "online": sum(d["online"] for d in rows),
                "offline": sum(not d["online"] for d in rows),
                "versions": fleet.versions,
                "rollouts": _jsonable(fleet.rollouts),
            }
        )

    return api
