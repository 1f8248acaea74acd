"""The device installer as it is handed out: ``bootstrap_script.py`` with a server's values.

One function renders it for both roads onto a device: ``GET /install/<platform>``
(engine/server/_install_api.py) and `engine bootstrap` over SSH. The script
carries the server's URL, the public keys it pins and its platform, never a
secret: each device proves itself with its own invite code.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fleetbase.platform import Platform
from states.signing import SignatureError, raw_public_key

__all__ = ["installer_script", "pinned_keys"]

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
