"""The dashboard's Jinja2 environment: templates from this package, autoescaped, with filters."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

__all__ = ["CSP", "page"]

_TEMPLATES = Path(__file__).parent / "templates"

#: Dashboard pages run only the engine's own script and styles (no inline script or style).
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _segment(value: str) -> str:
    """``value`` as one URL path segment (a slash in a device id included)."""
    return quote(value, safe="")


def _share(part: int, whole: int) -> float:
    """``part`` of ``whole`` in percent of a bar's width (0 for an empty whole)."""
    return 0.0 if whole <= 0 else round(100.0 * part / whole, 3)


_env = Environment(
    loader=FileSystemLoader(_TEMPLATES),
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters["when"] = _when
_env.filters["percent"] = _percent
_env.filters["segment"] = _segment
_env.globals["share"] = _share


def page(template: str, status: int = 200, **context: Any) -> HTMLResponse:
    """``template`` rendered with ``context``, with the dashboard's security headers."""
    html = _env.get_template(template).render(**context)
    return HTMLResponse(
        html,
        status_code=status,
        headers={
            "Content-Security-Policy": CSP,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "same-origin",
            "Cache-Control": "no-store",
        },
    )
