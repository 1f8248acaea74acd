"""Whether the engine's dependencies (the ``engine`` extra) are installed.

A device install (``pip install fleet-rollout``) has the runtime only, yet the
``engine`` console script is installed with it: it must say what to install
instead of failing with a traceback on the first missing import.
"""

from __future__ import annotations

import importlib.util

__all__ = ["ENGINE_EXTRA_MODULES", "INSTALL_HINT", "missing_engine_modules"]

#: Top-level modules of the ``engine`` extra's distributions (pyproject.toml).
ENGINE_EXTRA_MODULES: tuple[str, ...] = (
    "cryptography",
    "jinja2",
    "sqlalchemy",
    "psycopg",
    "fastapi",
    "uvicorn",
    "rich",
    "croniter",
    "orjson",
)

INSTALL_HINT = "pip install 'fleet-rollout[engine]' (from a checkout: pip install '.[engine]')"


def missing_engine_modules() -> list[str]:
    """The engine extra's modules that cannot be found (found without importing them)."""
    return [name for name in ENGINE_EXTRA_MODULES if importlib.util.find_spec(name) is None]
