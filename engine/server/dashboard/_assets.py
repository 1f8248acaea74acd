"""The dashboard's static files and the API documentation pages, all served from this package.

Swagger UI (``/docs``) and ReDoc (``/redoc``) load their scripts from
``/static/vendor/`` (see static/vendor/README.md), so they work offline.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from fastapi import APIRouter
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, Response

__all__ = ["STATIC", "router"]

STATIC = Path(__file__).parent / "static"

#: ReDoc's bundle shows a logo from its vendor's CDN: the page may load nothing but ours
#: (it styles itself inline and searches in a blob: worker).
_REDOC_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; worker-src 'self' blob:; font-src 'self' data:; object-src 'none'"
)

_TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".png": "image/png",
    ".svg": "image/svg+xml",
}


def _listing() -> dict[str, Path]:
    """Every servable file by its URL path under /static/ (nothing else can be asked for)."""
    return {
        p.relative_to(STATIC).as_posix(): p
        for p in STATIC.rglob("*")
        if p.is_file() and p.suffix in _TYPES
    }


def router(openapi_url: str, title: str) -> APIRouter:
    """Routes for /static/..., /docs and /redoc."""
    api = APIRouter(include_in_schema=False)
    files = _listing()

    @api.get("/static/{path:path}")
    async def static(path: str) -> Response:
        """One file of the dashboard's static directory."""
        found = files.get(path)
        if found is None:
            return Response("not found", status_code=404, media_type="text/plain")
        media = _TYPES.get(found.suffix) or mimetypes.guess_type(found.name)[0] or "text/plain"
        return FileResponse(
            found,
            media_type=media,
            headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"},
        )

    @api.get("/docs")
    async def swagger() -> HTMLResponse:
        """Swagger UI for the OpenAPI document, from local assets."""
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{title} - API",
            swagger_js_url="/static/vendor/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url="/static/vendor/swagger-ui/swagger-ui.css",
            swagger_favicon_url="/static/vendor/swagger-ui/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None},
        )

    @api.get("/redoc")
    async def redoc() -> HTMLResponse:
        """ReDoc for the OpenAPI document, from local assets (no web fonts, no remote logo)."""
        page = get_redoc_html(
            openapi_url=openapi_url,
            title=f"{title} - API",
            redoc_js_url="/static/vendor/redoc/redoc.standalone.js",
            redoc_favicon_url="/static/vendor/swagger-ui/favicon-32x32.png",
            with_google_fonts=False,
        )
        page.headers["Content-Security-Policy"] = _REDOC_CSP
        return page

    return api
