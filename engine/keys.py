"""The operator's side of the keys document: create, rotate, revoke and sign ``keys/keys.json``.

Every change writes a new version (one more than the last), signed by the root
key(s) given; the root's private keys stay on the operator's machine. The
server serves whatever is in the repo; devices decide (``states.keyring``).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from engine.signing import add_signatures, sign
from states.keyring import KEYS_DOCUMENT, KeyEntry, KeysDocument, KeysDocumentError, raw_key_id
from states.signing import SignatureDocument, SignatureError, raw_public_key

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = [
    "DEFAULT_VALIDITY",
    "KeysChange",
    "KeysFiles",
    "change_keys",
    "key_entry",
    "sign_document",
]

#: How long a keys document is trusted when the operator does not say.
DEFAULT_VALIDITY = timedelta(days=365)


@dataclass(frozen=True)
class KeysFiles:
    """Where an operator repo keeps its keys document and the root signatures of it."""

    document: Path
    signature: Path

    @classmethod
    def of(cls, repo: Path) -> KeysFiles:
        """The files of the repo at ``repo`` (``keys/keys.json`` and ``keys/keys.json.sig``)."""
        doc = repo / "keys" / KEYS_DOCUMENT
        return cls(doc, doc.with_name(KEYS_DOCUMENT + ".sig"))

    def load(self) -> KeysDocument | None:
        """The current document (not checked against any root), None when there is none yet.

        Raises KeysDocumentError when it cannot be read or parsed.
        """
        try:
            data = self.document.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise KeysDocumentError(f"{self.document}: cannot read: {e.strerror}") from e
        try:
            return KeysDocument.parse(data)
        except KeysDocumentError as e:
            raise KeysDocumentError(f"{self.document}: {e}") from e

    def write(self, doc: KeysDocument, root_keys: Sequence[Ed25519PrivateKey]) -> None:
        """Write the document and its signature by every root key given (signature first, so
        a crash between leaves a signature the old document fails, never an unsigned one)."""
        data = doc.to_bytes()
        self.document.parent.mkdir(parents=True, exist_ok=True)
        self.signature.write_bytes(sign(data, root_keys))
        self.document.write_bytes(data)


@dataclass(frozen=True)
class KeysChange:
    """What ``engine keys`` is asked to change; empty fields change nothing."""

    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()
    revoke: tuple[str, ...] = ()
    threshold: int | None = None
    validity: timedelta = DEFAULT_VALIDITY
    key_expires: datetime | None = None


def key_entry(text: str, expires: datetime | None = None) -> tuple[str, KeyEntry]:
    """(key id, entry) for a public key text; SignatureError when the key is unusable."""
    raw = raw_public_key(text)
    return raw_key_id(raw), KeyEntry(
        public="ed25519:" + base64.b64encode(raw).decode(), expires=expires
    )


def change_keys(current: KeysDocument | None, change: KeysChange, now: datetime) -> KeysDocument:
    """The next version of the keys document after ``change`` (version 1 when none exists).

    Raises KeysDocumentError when a key to remove or revoke is not listed, a revoked
    key would be added back, or the threshold could never be met.
    """
    keys = dict(current.keys) if current is not None else {}
    revoked = list(current.revoked) if current is not None else []
    for text in change.add:
        try:
            keyid, entry = key_entry(text, change.key_expires)
        except SignatureError as e:
            raise KeysDocumentError(f"cannot add {text.strip()!r}: {e}") from e
        if keyid in revoked:
            raise KeysDocumentError(f"key {keyid} was revoked: it cannot be trusted again")
        keys[keyid] = entry
    for keyid in (*change.remove, *change.revoke):
        if keyid not in keys:
            listed = ", ".join(sorted(keys)) or "none"
            raise KeysDocumentError(f"key {keyid} is not in the keys document (listed: {listed})")
        del keys[keyid]
    revoked.extend(k for k in change.revoke if k not in revoked)
    threshold = change.threshold or (current.threshold if current is not None else 1)
    if not keys:
        raise KeysDocumentError("the keys document would list no release signing key")
    try:
        return KeysDocument(
            version=current.version + 1 if current is not None else 1,
            expires=now + change.validity,
            threshold=threshold,
            keys=keys,
            revoked=revoked,
        )
    except ValidationError as e:  # e.g. a threshold above the number of keys
        msg = str(e.errors()[0]["msg"]).removeprefix("Value error, ")
        raise KeysDocumentError(msg) from e


def sign_document(files: KeysFiles, root_keys: Iterable[Ed25519PrivateKey]) -> list[str]:
    """Add root signatures to the existing document (for a root threshold above one: each
    holder signs in turn); returns the key ids that have signed it now.

    Raises KeysDocumentError when there is no readable document.
    """
    doc = files.load()
    if doc is None:
        raise KeysDocumentError(f"{files.document}: no keys document yet (engine keys init)")
    data = files.document.read_bytes()
    try:
        existing: bytes | None = files.signature.read_bytes()
    except FileNotFoundError:
        existing = None
    signed = add_signatures(data, existing, root_keys)
    files.signature.write_bytes(signed)
    return [s.keyid for s in SignatureDocument.model_validate_json(signed).signatures]
