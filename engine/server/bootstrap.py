"""Building a server from an operator repo: settings, store, credentials, the app.

``engine serve`` calls ``build_server`` once; with ``--workers N`` each
uvicorn worker process calls ``app_from_env`` (the options travel in
``$ENGINE_SERVE_OPTIONS``, the credentials in their usual variables).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from fastapi import FastAPI

from engine.server._checkin_db import REPORT_FLUSH_SECONDS
from engine.server._known import InventoryDevices, load_inventory_devices
from engine.server.app import create_app
from engine.server.clock import clock_from_env
from engine.server.credentials import (
    ADMIN_TOKEN_FILE,
    ENROLLMENT_SECRET_FILE,
    ENV_ADMIN_TOKEN,
    ENV_ENROLLMENT_SECRET,
    ENV_METRICS_TOKEN,
    METRICS_TOKEN_FILE,
    Credential,
    load_credential,
)
from engine.server.errors import CredentialError, ServerError
from engine.server.settings import ServerSettings
from engine.service.repo import load_repo, store_url
from engine.store import Store
from inventory.loader import OperatorRepo

__all__ = [
    "ENV_SERVE_OPTIONS",
    "BuiltServer",
    "ServeOptions",
    "app_from_env",
    "build_server",
    "report_flush_from_env",
    "setup_logging",
]

ENV_SERVE_OPTIONS = "ENGINE_SERVE_OPTIONS"
#: Seconds device reports are buffered before being written (0: written at once).
ENV_REPORT_FLUSH = "ENGINE_REPORT_FLUSH_SECONDS"


@dataclass(frozen=True)
class ServeOptions:
    """What the command line says about the server (None: engine.yaml or the default)."""

    root: str
    state: str | None = None
    poll_interval: float | None = None
    allow_unknown_devices: bool = False
    log_level: str = "info"


@dataclass
class BuiltServer:
    """A ready server: its settings, credentials and the loaded repo (the store is open)."""

    settings: ServerSettings
    admin: Credential
    enrollment: Credential
    repo: OperatorRepo
    metrics: Credential

    def app(self) -> FastAPI:
        """The ASGI application."""
        return create_app(self.settings)


def build_server(options: ServeOptions, *, migrate: bool = True) -> BuiltServer:
    """Load the repo, open (and migrate) the store, read or create the credentials.

    Raises InventoryError for a broken repo, StoreError, CredentialError.
    """
    root = Path(options.root).absolute()
    repo = load_repo(root)
    url = store_url(repo, options.state)
    admin = load_credential(root, ENV_ADMIN_TOKEN, ADMIN_TOKEN_FILE)
    enrollment = load_credential(root, ENV_ENROLLMENT_SECRET, ENROLLMENT_SECRET_FILE)
    metrics = load_credential(root, ENV_METRICS_TOKEN, METRICS_TOKEN_FILE)
    store = Store.open(url, migrate=migrate)
    poll = options.poll_interval
    if poll is None:
        poll = repo.settings.poll_interval.total_seconds()
    limits = repo.settings.server_limits
    known = None
    if not options.allow_unknown_devices:
        known = InventoryDevices(root, frozenset(repo.inventory.devices), load_inventory_devices)
    settings = ServerSettings(
        store=store,
        repo_root=root,
        admin_token=admin.value,
        enrollment_secret=enrollment.value,
        metrics_token=metrics.value,
        known_devices=known,
        poll_interval=poll,
        field_release=repo.settings.field_release,
        clock=clock_from_env(),
        runtime_bundles=root / repo.settings.runtime_bundles,
        install_keys=_install_keys(root, repo),
        public_url=repo.settings.server_url,
        events_per_minute=limits.events_per_minute,
        events_burst=limits.events_burst,
        events_kept_per_device=limits.events_kept_per_device,
        event_retention_seconds=limits.event_retention.total_seconds(),
        report_flush_seconds=report_flush_from_env(),
    )
    return BuiltServer(settings, admin, enrollment, repo, metrics)


def report_flush_from_env() -> float:
    """``$ENGINE_REPORT_FLUSH_SECONDS`` (default 0.2); ServerError unless 0 to 3600."""
    raw = os.environ.get(ENV_REPORT_FLUSH)
    if raw is None or not raw.strip():
        return REPORT_FLUSH_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 3600:
        raise ServerError(f"{ENV_REPORT_FLUSH}={raw!r}: expected seconds from 0 to 3600")
    return value


def _install_keys(root: Path, repo: OperatorRepo) -> list[str]:
    from engine.install.render import pinned_keys

    try:
        return pinned_keys(root, repo.settings.trusted_keys)
    except ValueError as e:
        raise CredentialError(str(e)) from e


def options_to_env(options: ServeOptions, built: BuiltServer) -> dict[str, str]:
    """Environment for worker processes: the options and both credentials."""
    return {
        ENV_SERVE_OPTIONS: json.dumps(asdict(options)),
        ENV_ADMIN_TOKEN: built.admin.value,
        ENV_ENROLLMENT_SECRET: built.enrollment.value,
        ENV_METRICS_TOKEN: built.metrics.value,
    }


def setup_logging(level: str) -> None:
    """The server's own concise log lines on stderr (uvicorn's access log stays off)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    for name in ("engine", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False


def app_from_env() -> FastAPI:
    """The app of one worker process, from ``$ENGINE_SERVE_OPTIONS`` (store already migrated)."""
    options = ServeOptions(**json.loads(os.environ[ENV_SERVE_OPTIONS]))
    setup_logging(options.log_level)
    return build_server(options, migrate=False).app()
