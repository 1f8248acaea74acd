"""``GET /install/<platform>``: the device installer with this server's URL and pinned keys.

The installer's source is ``engine/install/bootstrap_script.py`` (standard
library only, type-checked and tested like any module); the server fills in
its ``SERVER_URL``, ``PINNED_KEYS`` and ``PLATFORM`` lines. It carries no
secret: the device proves itself with its own invite code.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import Response

from engine.server._http import refuse
from engine.server.state import ServerState
from fleetbase.platform import Platform
from states.signing import SignatureError, raw_public_key

__all__ = ["installer_script", "pinned_keys", "router"]

_MARKERS = ('SERVER_URL = ""\n', "PINNED_KEYS: list[str] = []\n", 'PLATFORM = ""\n')


def pinned_keys(root: Path, key_files: list[str]) -> list[str]:
    """The public keys (``ed25519:<base64>``) of engine.yaml's ``trusted_keys`` files;
    ValueError naming a file that is missing or not a key."""
    keys = []
    for name in key_files:
        path = root / name
        try:
            text = path.read_text(encoding="utf-8").strip()
            raw_public_key(text)
        except (OSError, SignatureError) as e:
            raise ValueError(f"engine.yaml trusted_keys: {path}: {e}") from e
        keys.append(text)
    return keys


def installer_script(server_url: str, keys: list[str], platform: Platform) -> str:
    """The installer's source with the server URL, the pinned keys and the platform set."""
    source = resources.files("engine.install").joinpath("bootstrap_script.py").read_text("utf-8")
    values = (
        f"SERVER_URL = {server_url.rstrip('/')!r}\n",
        f"PINNED_KEYS: list[str] = {keys!r}\n",
        f"PLATFORM = {platform.value!r}\n",
    )
    for marker, value in zip(_MARKERS, values, strict=True):
        if source.count(marker) != 1:
            raise RuntimeError(f"bootstrap_script.py must contain the line {marker!r} once")
        source = source.replace(marker, value)
    return source


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
