"""Release signing keys and signatures made with ``cryptography`` (engine side only).

The signature document format and raw-key verification, which the device
runtime uses without ``cryptography``, are in ``states.signing``; this module
adds key objects: generating, reading and writing keys, signing, and verifying
with key objects. ``cryptography`` is imported only inside the functions that
need it, so that commands which never sign start without it.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from states.signing import (
    SignatureDocument,
    SignatureEntry,
    SignatureError,
    count_valid,
    key_id_of,
    refuse_weak_key,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

__all__ = [
    "TrustedKeys",
    "add_signatures",
    "generate_key",
    "key_id",
    "load_private_key",
    "load_public_key",
    "private_key_pem",
    "public_key_text",
    "sign",
    "trusted_keys",
    "verify",
]


def _raw(public_key: Ed25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_key: Ed25519PublicKey) -> str:
    """The short identifier of a public key (16 hex digits of its sha256)."""
    return key_id_of(_raw(public_key))


def generate_key() -> Ed25519PrivateKey:
    """A new ed25519 signing key."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate()


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    """PKCS#8 PEM text of a private key (unencrypted: protect the file itself)."""
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_key_text(public_key: Ed25519PublicKey) -> str:
    """One-line text form of a public key, as pinned in device configs: ``ed25519:<base64>``."""
    return "ed25519:" + base64.b64encode(_raw(public_key)).decode()


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read a PEM ed25519 private key; raise SignatureError naming the file."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise SignatureError(f"{path}: cannot read the signing key: {e}") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path}: not an ed25519 private key")
    return key


def load_public_key(text: str) -> Ed25519PublicKey:
    """Parse ``ed25519:<base64>`` (or a PEM public key); raise SignatureError."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode())
            if not isinstance(key, Ed25519PublicKey):
                raise SignatureError("not an ed25519 public key")
            refuse_weak_key(_raw(key))
            return key
        if not text.startswith("ed25519:"):
            raise SignatureError(
                "a public key must look like 'ed25519:<base64 of 32 bytes>' (see `engine keygen`)"
            )
        raw = base64.b64decode(text.removeprefix("ed25519:"), validate=True)
        key = Ed25519PublicKey.from_public_bytes(raw)
    except (ValueError, binascii.Error) as e:
        raise SignatureError(f"malformed public key: {e}") from e
    refuse_weak_key(_raw(key))
    return key


def sign(data: bytes, keys: Iterable[Ed25519PrivateKey]) -> bytes:
    """The ``.sig`` document (JSON bytes) signing ``data`` with every key given."""
    entries = [
        SignatureEntry(keyid=key_id(k.public_key()), sig=base64.b64encode(k.sign(data)).decode())
        for k in keys
    ]
    doc = SignatureDocument(signatures=entries)
    return (json.dumps(doc.model_dump(), indent=2) + "\n").encode()


def add_signatures(data: bytes, existing: bytes | None, keys: Iterable[Ed25519PrivateKey]) -> bytes:
    """The ``.sig`` document of ``existing`` (if readable) plus signatures by ``keys``: a
    key's new signature replaces its old one. For thresholds above one, where each key
    holder signs in turn."""
    added = SignatureDocument.model_validate_json(sign(data, keys)).signatures
    kept: list[SignatureEntry] = []
    if existing is not None:
        try:
            kept = list(SignatureDocument.model_validate_json(existing).signatures)
        except ValueError:
            kept = []
    new_ids = {s.keyid for s in added}
    doc = SignatureDocument(signatures=[s for s in kept if s.keyid not in new_ids] + added)
    return (json.dumps(doc.model_dump(), indent=2) + "\n").encode()


TrustedKeys = dict[str, "Ed25519PublicKey"]


def trusted_keys(texts: Iterable[str]) -> TrustedKeys:
    """Key id → public key for pinned key texts; raise SignatureError on a malformed one."""
    keys = [load_public_key(t) for t in texts]
    return {key_id(k): k for k in keys}


def verify(data: bytes, signature_document: bytes, trusted: TrustedKeys, threshold: int = 1) -> str:
    """Check that at least ``threshold`` trusted keys signed ``data``; return the first one's id.

    Raises SignatureError when the document is malformed or too few trusted keys' signatures
    match (each entry is tried, not only the first trusted one).
    """
    from cryptography.exceptions import InvalidSignature

    def check(keyid: str, signature: bytes, payload: bytes) -> bool:
        try:
            trusted[keyid].verify(signature, payload)
        except InvalidSignature:
            return False
        return True

    return count_valid(data, signature_document, trusted, threshold, check)[0]
