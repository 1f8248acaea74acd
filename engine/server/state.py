"""What the server's routes share: settings, the store, caches, the check-in handler.

Its own module so that the routers and ``app.py`` (which only wires them)
both import it and nothing imports ``app.py`` back.
"""

from __future__ import annotations

import random

from engine.server._auth import DeviceTokens, TokenRow
from engine.server._checkin import Checkins
from engine.server._checkin_db import CheckinDatabase
from engine.server._configs import ServerConfigs
from engine.server._device_db import DeviceSql, lookup_token
from engine.server._releases import ArtifactIndex, ReleaseSource, read_releases_table
from engine.server.settings import ServerSettings

__all__ = ["ServerState"]


class ServerState:
    """What the routes share: settings, the store, caches."""

    def __init__(self, settings: ServerSettings) -> None:
        """Prepare statements and caches for ``settings``."""
        self.settings = settings
        self.store = settings.store
        self.sql = DeviceSql(settings.store.engine.dialect.name)
        self.tokens = DeviceTokens(self._lookup_token, settings.token_cache_seconds)
        self.releases = ReleaseSource(settings.repo_root, self._read_releases)
        self.artifacts = ArtifactIndex(settings.repo_root / "artifacts", self.releases)
        self.checkin_db = CheckinDatabase(
            settings.store,
            self.sql,
            self.tokens,
            offer=settings.offer,
            flush_seconds=settings.report_flush_seconds,
        )
        self._random = random.Random()
        self.checkins = Checkins(
            tokens=self.tokens,
            clock=settings.clock,
            max_body_bytes=settings.max_body_bytes,
            db=self.checkin_db,
            poll_interval=self.poll_interval,
            configs=ServerConfigs(settings.repo_root),
        )

    def poll_interval(self) -> float:
        """The configured poll interval with +-``poll_jitter`` applied, in seconds."""
        s = self.settings
        return round(s.poll_interval * (1 + s.poll_jitter * (2 * self._random.random() - 1)), 3)

    def close(self) -> None:
        """Write the buffered reports and stop the check-in threads (server shutdown)."""
        self.checkin_db.close()

    def _lookup_token(self, device: str) -> TokenRow | None:
        with self.store.read() as conn:
            return lookup_token(conn, self.sql, device)

    def _read_releases(self, version: str | None) -> list[tuple[str, int, bytes, bytes | None]]:
        with self.store.read() as conn:
            return read_releases_table(conn, version)
