"""The operator dashboard served by `engine serve`: fleet, rollouts, devices, API docs.

Server-rendered Jinja2 pages with one small script, every asset served from
this package (``static/``, including Swagger UI and ReDoc), a session cookie
after logging in with the admin token. See docs/dashboard.md.
"""

from __future__ import annotations

from fastapi import APIRouter

from engine.server.dashboard import _assets, _pages
from engine.server.state import ServerState

__all__ = ["router"]


def router(state: ServerState, *, openapi_url: str = "/openapi.json") -> APIRouter:
    """The dashboard's pages, its static files and the API documentation pages."""
    api = APIRouter(include_in_schema=False)
    api.include_router(_pages.router(state))
    api.include_router(_assets.router(openapi_url, state.settings.title))
    return api
