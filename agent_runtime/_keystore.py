"""The device's trusted release keys: pinned in its config, or delegated by a root-signed document.

With ``root_keys`` in the config, the runtime keeps the newest keys document
it accepted (``<state_dir>/keys.json``: the document and its signature in one
file, replaced atomically) and trusts exactly the keys it lists, with its
threshold. Without ``root_keys`` the config's ``trusted_keys`` count, any one
of them sufficing, as before keys documents existed.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from pathlib import Path

from agent_runtime._fsutil import atomic_write_bytes
from agent_runtime.config import DeviceConfig
from states.keyring import (
    KEYS_DOCUMENT,
    KeyRing,
    KeysDocument,
    KeysDocumentError,
    RootOfTrust,
    accept_keys_document,
)
from states.signing import raw_trusted_keys

__all__ = ["KeyStore"]


class KeyStore:
    """Which release keys this device trusts now, and the keys documents it accepts."""

    def __init__(self, config: DeviceConfig) -> None:
        """Read the pinned keys of ``config`` (the cached document is read on first use)."""
        self.pinned = raw_trusted_keys(config.trusted_keys)
        self.root = (
            RootOfTrust.from_texts(config.root_keys, config.root_threshold)
            if config.root_keys
            else None
        )
        self.path = config.state_dir / KEYS_DOCUMENT
        self._current: KeysDocument | None = None
        self._loaded = False

    def ring(self, now: datetime) -> KeyRing:
        """The release keys trusted at ``now`` and their threshold."""
        if self.root is None:
            return KeyRing.pinned(self.pinned)
        doc = self.current()
        if doc is not None:
            return doc.ring(now)
        if self.pinned:
            return KeyRing(self.pinned, 1, "trusted_keys, until a keys document is accepted")
        return KeyRing({}, 1, "no keys document signed by the root keys has been accepted yet")

    def wants_refresh(self, now: datetime) -> bool:
        """True when a keys document should be fetched even without an update in sight: root
        keys are configured and none is accepted yet, or the accepted one has expired."""
        if self.root is None:
            return False
        doc = self.current()
        return doc is None or doc.expires <= now

    def current(self) -> KeysDocument | None:
        """The keys document accepted last (re-checked against the root), or None."""
        if not self._loaded:
            self._current = self._read(self.path)
            self._loaded = True
        return self._current

    def offer(self, data: bytes, signature: bytes, now: datetime) -> bool:
        """Accept a fetched keys document if it is newer; True when it replaced the one kept.

        Raises KeysDocumentError when it is not signed by the root threshold, is
        malformed or expired, or is older than the one kept. Without root keys
        there is nothing to accept: returns False.
        """
        if self.root is None:
            return False
        current = self.current()
        doc = accept_keys_document(data, signature, self.root, now, current)
        if current is not None and doc.version == current.version:
            return False
        kept = {
            "document": base64.b64encode(data).decode(),
            "signature": base64.b64encode(signature).decode(),
        }
        atomic_write_bytes(self.path, json.dumps(kept).encode())
        self._current = doc
        return True

    def _read(self, path: Path) -> KeysDocument | None:
        """The kept document if it still verifies against the root."""
        assert self.root is not None
        try:
            kept = json.loads(path.read_bytes())
            data = base64.b64decode(kept["document"], validate=True)
            signature = base64.b64decode(kept["signature"], validate=True)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, binascii.Error):
            return None  # unreadable: as if none was kept; the next fetch replaces it
        try:
            # expiry is judged by ring(): an expired kept document still blocks older ones
            return accept_keys_document(data, signature, self.root, _BEGINNING, None)
        except KeysDocumentError:
            return None


_BEGINNING = datetime.min.replace(tzinfo=UTC)
