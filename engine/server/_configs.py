"""Config bundles at check-in: each device's files rendered with the real secret values.

Secrets are never stored: the server renders a device's bundle from the
operator repo and the secrets file when it hands out a plan that installs
config, and only when the rendering's digest is the one the applied rollout
wants (the repo may have changed since the apply: then it is reloaded once;
a device whose config still differs gets no plan until the next apply).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from engine.config_render import ConfigRenderer, ConfigRenderError
from engine.errors import EngineError
from engine.secrets_file import load_secrets
from fleetbase.version import Version
from inventory.errors import InventoryError
from states.config_bundle import ConfigBundle

__all__ = ["ServerConfigs"]

log = logging.getLogger("engine.server")

#: Least seconds between two reloads of the operator repo caused by a digest mismatch.
RELOAD_AFTER = 2.0


class ServerConfigs:
    """Renders config bundles from the operator repo at ``root`` (loaded once, reloaded on need)."""

    def __init__(self, root: Path) -> None:
        """Render from the operator repo at ``root`` (loaded at the first bundle)."""
        self.root = root
        self._renderer: ConfigRenderer | None = None
        self._loaded_at = 0.0
        self._lock = threading.Lock()

    def bundle(self, device: str, version: Version, digest: str) -> ConfigBundle | None:
        """``device``'s bundle under ``version`` when it renders to ``digest``, else None."""
        with self._lock:
            for reload in (False, True):
                renderer = self._current(reload)
                if renderer is None:
                    return None
                try:
                    rendered = renderer.render(device, version)
                except (ConfigRenderError, KeyError) as e:
                    log.warning("device %s: config not rendered: %s", device, e)
                    rendered = None
                if rendered is not None and rendered.digest == digest:
                    return rendered.bundle
            found = "nothing" if rendered is None else rendered.digest
            log.warning(
                "device %s: the operator repo renders config %s, the applied rollout wants %s: "
                "no plan until they agree (engine apply)",
                device,
                found,
                digest,
            )
            return None

    def _current(self, reload: bool) -> ConfigRenderer | None:
        now = time.monotonic()
        if self._renderer is not None and (not reload or now - self._loaded_at < RELOAD_AFTER):
            return self._renderer
        from engine.service.repo import load_repo

        try:
            repo = load_repo(self.root)
            secrets = load_secrets(repo.root, repo.settings.secrets_file)
        except (InventoryError, EngineError) as e:
            log.error("config files cannot be rendered: %s", e)
            return self._renderer
        self._renderer = ConfigRenderer(repo, secrets)
        self._loaded_at = now
        return self._renderer
