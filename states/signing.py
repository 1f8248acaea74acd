"""Detached ed25519 signatures of release manifests.

A manifest file is signed byte for byte; the signature file beside it
(``<manifest>.sig``) is JSON::

    {"signatures": [{"keyid": "<16 hex>", "algorithm": "ed25519", "sig": "<base64>"}]}

A list, so that a release can carry the signatures of an old and a new key
while devices' pinned keys are rotated. The key id is the first 16 hex digits
of the sha256 of the raw 32-byte public key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = [
    "SIGNATURE_SUFFIX",
    "SignatureDocument",
    "SignatureEntry",
    "SignatureError",
    "TrustedKeys",
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

SIGNATURE_SUFFIX = ".sig"


class SignatureError(Exception):
    """A signature is missing, malformed, by an unknown key, or does not match."""


class SignatureEntry(BaseModel):
    """One signature over the manifest bytes."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    keyid: str
    algorithm: str = "ed25519"
    sig: str


class SignatureDocument(BaseModel):
    """The content of a ``.sig`` file."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    signatures: list[SignatureEntry] = Field(min_length=1)


def _raw(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_key: Ed25519PublicKey) -> str:
    """The short identifier of a public key (16 hex digits of its sha256)."""
    return hashlib.sha256(_raw(public_key)).hexdigest()[:16]


def generate_key() -> Ed25519PrivateKey:
    """A new ed25519 signing key."""
    return Ed25519PrivateKey.generate()


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    """PKCS#8 PEM text of a private key (unencrypted: protect the file itself)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_key_text(public_key: Ed25519PublicKey) -> str:
    """One-line text form of a public key, as pinned in device configs: ``ed25519:<base64>``."""
    return "ed25519:" + base64.b64encode(_raw(public_key)).decode()


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read a PEM ed25519 private key; raise SignatureError naming the file."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise SignatureError(f"{path}: cannot read the signing key: {e}") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path}: not an ed25519 private key")
    return key


def load_public_key(text: str) -> Ed25519PublicKey:
    """Parse ``ed25519:<base64>`` (or a PEM public key); raise SignatureError."""
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode())
            if not isinstance(key, Ed25519PublicKey):
                raise SignatureError("not an ed25519 public key")
            return key
        if not text.startswith("ed25519:"):
            raise SignatureError(
                "a public key must look like 'ed25519:<base64 of 32 bytes>' (see `engine keygen`)"
            )
        raw = base64.b64decode(text.removeprefix("ed25519:"), validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (ValueError, binascii.Error) as e:
        raise SignatureError(f"malformed public key: {e}") from e


def sign(data: bytes, keys: Iterable[Ed25519PrivateKey]) -> bytes:
    """The ``.sig`` document (JSON bytes) signing ``data`` with every key given."""
    entries = [
        SignatureEntry(keyid=key_id(k.public_key()), sig=base64.b64encode(k.sign(data)).decode())
        for k in keys
    ]
    doc = SignatureDocument(signatures=entries)
    return (json.dumps(doc.model_dump(), indent=2) + "\n").encode()


TrustedKeys = dict[str, Ed25519PublicKey]


def trusted_keys(texts: Iterable[str]) -> TrustedKeys:
    """Key id → public key for pinned key texts; raise SignatureError on a malformed one."""
    keys = [load_public_key(t) for t in texts]
    return {key_id(k): k for k in keys}


def verify(data: bytes, signature_document: bytes, trusted: TrustedKeys) -> str:
    """Check that a trusted key signed ``data``; return its key id.

    Raises SignatureError when the document is malformed, no signature is by a
    trusted key, or a trusted key's signature does not match.
    """
    if not trusted:
        raise SignatureError("no trusted keys are configured: refusing every manifest")
    try:
        doc = SignatureDocument.model_validate_json(signature_document)
    except ValidationError as e:
        raise SignatureError(f"malformed signature file: {e.errors()[0]['msg']}") from e
    known = [s for s in doc.signatures if s.keyid in trusted and s.algorithm == "ed25519"]
    if not known:
        ids = ", ".join(s.keyid for s in doc.signatures)
        raise SignatureError(f"signed by unknown key(s) {ids}; trusted: {', '.join(trusted)}")
    for entry in known:
        try:
            trusted[entry.keyid].verify(base64.b64decode(entry.sig, validate=True), data)
        except (InvalidSignature, ValueError, binascii.Error) as e:
            raise SignatureError(
                f"signature by key {entry.keyid} does not match the manifest bytes"
            ) from e
        return entry.keyid
    raise SignatureError("no usable signature")  # pragma: no cover - loop returns or raises
