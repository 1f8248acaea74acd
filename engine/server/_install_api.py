"""``GET /install/<platform>``: the device installer with this server's URL and pinned keys.

The installer's source is ``engine/install/bootstrap_script.py`` (standard
library only, type-checked and tested like any module);
``engine.install.render.installer_script`` fills in its ``SERVER_URL``,
``PINNED_KEYS`` and ``PLATFORM`` lines, as it does for `engine bootstrap`. It carries no
secret: the device proves itself with its own invite code.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from engine.install.render import installer_script
from engine.server._http import refuse
from engine.server.state import ServerState
from fleetbase.platform import Platform

__all__ = ["router"]


def router(state: ServerState) -> APIRouter:
    """The installer route, bound to ``state``."""
    api = APIRouter(tags=["install"])
    settings = state.settings

    @api.get(
        "/install/{platform}",
        response_class=Response,
        responses={
            200: {"content": {"text/x-python": {}}},
            404: {"description": "not a platform: linux, macos or windows"},
            409: {"description": "engine.yaml pins no release signing key"},
        },
    )
    async def install(platform: str, request: Request) -> Response:
        """The standard-library-only installer for ``platform`` (run it with python3)."""
        try:
            plat = Platform(platform)
        except ValueError:
            refuse(404, f"no installer for {platform!r}: linux, macos or windows")
        if not settings.install_keys:
            refuse(
                409,
                "engine.yaml names no trusted_keys: the installer would trust no runtime "
                "bundle; add the release signing key's public file there",
            )
        url = settings.public_url or str(request.base_url)
        script = installer_script(url, settings.install_keys, plat)
        return Response(script, media_type="text/x-python; charset=utf-8")

    return api
