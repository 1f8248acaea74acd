"""The dashboard's pages: login, fleet, rollouts (with pause/resume/abort), devices, one device.

Server-rendered; every read is an aggregate or a page (100k devices). A page
asked for without a session redirects to the login form; an action needs the
session's CSRF token and a same-origin request.
"""

from __future__ import annotations

import logging
from datetime import datetime
from functools import partial
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from engine.rollouts import (
    DeviceState,
    RolloutAction,
    RolloutNotFoundError,
    RolloutState,
    RolloutStateError,
    act_on_rollout,
    resolve_rollout,
    rollout_status,
)
from engine.rollouts.forensics import device_detail, rollout_devices_page
from engine.rollouts.gates import rollout_gates
from engine.rollouts.overview import (
    DeviceFilter,
    FleetOverview,
    fleet_overview,
    search_devices,
    unreported_devices,
)
from engine.rollouts.status import RolloutStatus
from engine.server.dashboard._cache import ReadCache
from engine.server.dashboard._render import page
from engine.server.dashboard._session import COOKIE, Session, Sessions
from engine.server.state import ServerState
from fleetbase.platform import Platform

__all__ = ["router"]

log = logging.getLogger("engine.server")

PAGE_SIZE = 50
#: How long the fleet and rollouts pages reuse their aggregate reads (see _cache).
CACHE_SECONDS = 3.0
#: Which buttons a rollout in each state shows.
_ALLOWED = {
    RolloutState.WAITING: ("pause", "abort"),
    RolloutState.ACTIVE: ("pause", "abort"),
    RolloutState.PAUSED: ("resume", "abort"),
    RolloutState.HALTED: ("abort",),
    RolloutState.COMPLETED: ("abort",),
}
_STATES = [s.value for s in DeviceState]
_PLATFORMS = [p.value for p in Platform]
_Text = Annotated[str, Query(max_length=200)]


def _local(target: str | None) -> str:
    """``target`` when it is a path on this server, else ``/`` (no open redirect)."""
    if target and target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return "/"


def _same_origin(request: Request) -> bool:
    """Whether a form post comes from a page of this server (Origin / Sec-Fetch-Site)."""
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    host = request.headers.get("host", "")
    return origin.split("://", 1)[-1] == host


def _rollout_view(conn: Any, status: RolloutStatus, now: datetime) -> dict[str, Any]:
    """A rollout with its gates and the buttons its state allows."""
    return {
        "r": status,
        "gates": rollout_gates(conn, status, now=now),
        "actions": _ALLOWED.get(status.state, ()),
    }


def router(state: ServerState) -> APIRouter:
    """The dashboard's routes, bound to ``state``."""
    settings = state.settings
    sessions = Sessions(settings.admin_token)
    cache = ReadCache(ttl=CACHE_SECONDS)
    api = APIRouter(include_in_schema=False)

    def session_of(request: Request) -> Session | None:
        return sessions.check(request.cookies.get(COOKIE))

    def to_login(request: Request) -> RedirectResponse:
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(here, safe='')}", status_code=303)

    def show(template: str, session: Session, status: int = 200, **context: Any) -> HTMLResponse:
        return page(template, status, csrf=session.csrf, title=settings.title, **context)

    @api.get("/login")
    def login_form(next: _Text = "/") -> HTMLResponse:
        """The login form."""
        return page("login.html", next=_local(next), error=None, title=settings.title, csrf="")

    @api.post("/login")
    def login(
        request: Request,
        token: Annotated[str, Form(max_length=500)] = "",
        next: Annotated[str, Form(max_length=500)] = "/",
    ) -> Response:
        """Check the admin token; set the session cookie and go on to ``next``."""
        if not _same_origin(request):
            return page(
                "login.html",
                403,
                next="/",
                error="cross-site login refused",
                title=settings.title,
                csrf="",
            )
        if not sessions.token_matches(token):
            log.warning("dashboard: login with a wrong token from %s", request.client)
            return page(
                "login.html",
                403,
                next=_local(next),
                error="That is not the admin token.",
                title=settings.title,
                csrf="",
            )
        cookie, _ = sessions.issue()
        response = RedirectResponse(_local(next), status_code=303)
        response.set_cookie(
            COOKIE,
            cookie,
            max_age=sessions.lifetime,
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    @api.post("/logout")
    def logout(request: Request, csrf: Annotated[str, Form(max_length=200)] = "") -> Response:
        """End the session (the cookie is dropped)."""
        session = session_of(request)
        response = RedirectResponse("/login", status_code=303)
        if session is not None and sessions.csrf_ok(session, csrf) and _same_origin(request):
            response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    @api.get("/")
    def fleet(request: Request) -> Response:
        """Fleet: devices by version, platform, group, online; failures; success per release."""
        session = session_of(request)
        if session is None:
            return to_login(request)

        def read() -> tuple[FleetOverview, list[RolloutStatus]]:
            now = settings.clock()
            with state.store.read() as conn:
                return (
                    fleet_overview(conn, now=now, online_within=settings.online_seconds),
                    rollout_status(conn, now=now, limit=10),
                )

        overview, rollouts = cache.get("fleet", read)
        top = max(overview.versions.values(), default=0)
        return show(
            "fleet.html", session, o=overview, rollouts=rollouts, top=top, now=overview.generated_at
        )

    @api.get("/rollouts")
    def rollouts_page(request: Request) -> Response:
        """Every rollout (newest 50) with per-wave progress, gates and actions."""
        session = session_of(request)
        if session is None:
            return to_login(request)

        def read() -> tuple[datetime, list[dict[str, Any]]]:
            now = settings.clock()
            with state.store.read() as conn:
                return now, [_rollout_view(conn, s, now) for s in rollout_status(conn, now=now)]

        now, views = cache.get("rollouts", read)
        return show("rollouts.html", session, views=views, now=now, refresh=5)

    @api.get("/rollouts/{rollout}")
    def rollout_page(
        request: Request,
        rollout: str,
        state_filter: Annotated[str, Query(alias="state", max_length=20)] = "",
        page_no: Annotated[int, Query(alias="page", ge=1, le=100_000)] = 1,
    ) -> Response:
        """One rollout: waves, gates, actions, and a page of its devices with their last step."""
        session = session_of(request)
        if session is None:
            return to_login(request)
        return rollout_detail(session, rollout, state_filter, page_no)

    def rollout_detail(
        session: Session, rollout: str, state_filter: str, page_no: int, error: str | None = None
    ) -> HTMLResponse:
        if state_filter and state_filter not in _STATES:
            error = f"unknown state {state_filter[:20]!r}: one of {', '.join(_STATES)}"
            state_filter = ""
        now = settings.clock()
        try:
            with state.store.read() as conn:
                rollout_id = resolve_rollout(conn, rollout)

                def read() -> dict[str, Any]:
                    found = rollout_status(conn, now=now, rollout_id=rollout_id)[0]
                    return _rollout_view(conn, found, now)

                view = cache.get(f"rollout:{rollout_id}", read)
                devices = rollout_devices_page(
                    conn,
                    rollout_id,
                    now=now,
                    states=[DeviceState(state_filter)] if state_filter else (),
                    limit=PAGE_SIZE,
                    offset=(page_no - 1) * PAGE_SIZE,
                )
        except RolloutNotFoundError as e:
            return show("error.html", session, 404, message=str(e))
        return show(
            "rollout.html",
            session,
            409 if error else 200,
            view=view,
            devices=devices,
            state_filter=state_filter,
            states=_STATES,
            page_no=page_no,
            pages=max(1, -(-devices.total // PAGE_SIZE)),
            link=lambda p: (
                f"/rollouts/{rollout_id}?" + urlencode({"state": state_filter, "page": p})
            ),
            error=error,
            now=now,
            refresh=5,
        )

    @api.post("/rollouts/{rollout}/{action}")
    def act(
        request: Request,
        rollout: str,
        action: str,
        csrf: Annotated[str, Form(max_length=200)] = "",
    ) -> Response:
        """Pause, resume or abort a rollout (CSRF token and same origin required)."""
        session = session_of(request)
        if session is None:
            return to_login(request)
        if not sessions.csrf_ok(session, csrf) or not _same_origin(request):
            return show(
                "error.html",
                session,
                403,
                message="refused: the form's token does not match this session; "
                "reload the page and try again",
            )
        if action not in set(RolloutAction):
            return show(
                "error.html",
                session,
                404,
                message=f"unknown action {action[:20]!r}: use pause, resume or abort",
            )
        now = settings.clock()
        try:
            with state.store.write() as conn:
                rollout_id = resolve_rollout(conn, rollout)
                act_on_rollout(conn, rollout_id, RolloutAction(action), now, by="the dashboard")
        except RolloutNotFoundError as e:
            return show("error.html", session, 404, message=str(e))
        except RolloutStateError as e:
            return rollout_detail(session, rollout, "", 1, error=str(e))
        cache.clear()
        log.info("rollout %s: %s by the dashboard", rollout, action)
        return RedirectResponse(f"/rollouts/{rollout_id}", status_code=303)

    @api.get("/devices")
    def devices_page(  # noqa: PLR0917 (one argument per query parameter)
        request: Request,
        q: _Text = "",
        group: _Text = "",
        version: _Text = "",
        device_state: Annotated[str, Query(alias="state", max_length=20)] = "",
        online: Annotated[str, Query(max_length=5)] = "",
        platform: Annotated[str, Query(max_length=16)] = "",
        page_no: Annotated[int, Query(alias="page", ge=1, le=100_000)] = 1,
    ) -> Response:
        """The device list: search, filters, server-side paging."""
        session = session_of(request)
        if session is None:
            return to_login(request)
        errors = []
        if device_state and device_state not in _STATES:
            errors.append(f"state: one of {', '.join(_STATES)}")
            device_state = ""
        if online not in ("", "yes", "no"):
            errors.append("online: yes or no")
            online = ""
        if platform and platform not in _PLATFORMS:
            errors.append(f"platform: one of {', '.join(_PLATFORMS)}")
            platform = ""
        filters = DeviceFilter(
            q=q or None,
            group=group or None,
            version=version or None,
            state=DeviceState(device_state) if device_state else None,
            online=None if not online else online == "yes",
            platform=platform or None,
        )
        now = settings.clock()
        with state.store.read() as conn:
            found = search_devices(
                conn,
                filters,
                now=now,
                online_within=settings.online_seconds,
                limit=PAGE_SIZE,
                offset=(page_no - 1) * PAGE_SIZE,
                unreported=cache.get("unreported", partial(unreported_devices, conn)),
            )
        query = {
            "q": q,
            "group": group,
            "version": version,
            "state": device_state,
            "online": online,
            "platform": platform,
        }
        return show(
            "devices.html",
            session,
            400 if errors else 200,
            found=found,
            query=query,
            states=_STATES,
            platforms=_PLATFORMS,
            page_no=page_no,
            pages=max(1, -(-found.total // PAGE_SIZE)),
            link=lambda p: "/devices?" + urlencode({**query, "page": p}),
            errors=errors,
            now=now,
        )

    @api.get("/devices/{device:path}")
    def device_page(request: Request, device: str) -> Response:
        """One device: report, heartbeat, transaction, rollouts and its event timeline."""
        session = session_of(request)
        if session is None:
            return to_login(request)
        now = settings.clock()
        with state.store.read() as conn:
            detail = device_detail(conn, device, now=now, online_within=settings.online_seconds)
        if detail is None:
            return show("error.html", session, 404, message=f"no device {device[:200]!r}")
        updates: list[tuple[str, list[Any]]] = []
        for event in reversed(detail.events):  # oldest first, grouped per target in a row
            if not updates or updates[-1][0] != event.target:
                updates.append((event.target, []))
            updates[-1][1].append(event)
        updates.reverse()
        return show("device.html", session, d=detail, updates=updates, now=now, refresh=10)

    return api
