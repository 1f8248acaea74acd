"""Detached ed25519 signatures of release manifests.

A manifest file is signed byte for byte; the signature file beside it
(``<manifest>.sig``) is JSON::

    {"signatures": [{"keyid": "<16 hex>", "algorithm": "ed25519", "sig": "<base64>"}]}

A list, so that a release can carry the signatures of an old and a new key
while devices' pinned keys are rotated. The key id is the first 16 hex digits
of the sha256 of the raw 32-byte public key.

``cryptography`` is imported only by the functions that need key objects
(keygen, signing, ``load_public_key``, ``verify``). The agent runtime verifies
with raw keys (``raw_trusted_keys``, ``verify_raw``), which use the system's
OpenSSL through ``states._ed25519`` and keep ``cryptography`` (≈8 MB resident)
out of the process.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from states import _ed25519

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

__all__ = [
    "SIGNATURE_SUFFIX",
    "RawTrustedKeys",
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
    "raw_public_key",
    "raw_trusted_keys",
    "sign",
    "trusted_keys",
    "verify",
    "verify_raw",
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
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_key: Ed25519PublicKey) -> str:
    """The short identifier of a public key (16 hex digits of its sha256)."""
    return hashlib.sha256(_raw(public_key)).hexdigest()[:16]


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


TrustedKeys = dict[str, "Ed25519PublicKey"]
#: Key id → raw 32-byte ed25519 public key (``verify_raw``: no ``cryptography`` needed).
RawTrustedKeys = dict[str, bytes]


def trusted_keys(texts: Iterable[str]) -> TrustedKeys:
    """Key id → public key for pinned key texts; raise SignatureError on a malformed one."""
    keys = [load_public_key(t) for t in texts]
    return {key_id(k): k for k in keys}


def _trusted_signature(signature_document: bytes, trusted: Collection[str]) -> tuple[str, bytes]:
    """The key id and signature bytes of the first signature by a trusted key.

    Raises SignatureError when nothing is trusted, the document is malformed,
    no signature is by a trusted key, or the signature is not base64.
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
    entry = known[0]
    try:
        return entry.keyid, base64.b64decode(entry.sig, validate=True)
    except (ValueError, binascii.Error) as e:
        raise SignatureError(
            f"signature by key {entry.keyid} does not match the manifest bytes"
        ) from e


def verify(data: bytes, signature_document: bytes, trusted: TrustedKeys) -> str:
    """Check that a trusted key signed ``data``; return its key id.

    Raises SignatureError when the document is malformed, no signature is by a
    trusted key, or a trusted key's signature does not match.
    """
    from cryptography.exceptions import InvalidSignature

    keyid, signature = _trusted_signature(signature_document, trusted)
    try:
        trusted[keyid].verify(signature, data)
    except InvalidSignature as e:
        raise SignatureError(f"signature by key {keyid} does not match the manifest bytes") from e
    return keyid


#: DER prefix of an ed25519 SubjectPublicKeyInfo (RFC 8410): the raw key follows.
_SPKI_ED25519_PREFIX = bytes.fromhex("302a300506032b6570032100")


def raw_public_key(text: str) -> bytes:
    """The raw 32 bytes of ``ed25519:<base64>`` (or a PEM public key), parsed without
    ``cryptography``; raise SignatureError as ``load_public_key`` does."""
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
            if lines[0] != "-----BEGIN PUBLIC KEY-----" or lines[-1] != "-----END PUBLIC KEY-----":
                raise SignatureError("not an ed25519 public key")
            der = base64.b64decode("".join(lines[1:-1]), validate=True)
            if len(der) != 44 or not der.startswith(_SPKI_ED25519_PREFIX):
                raise SignatureError("not an ed25519 public key")
            return der[len(_SPKI_ED25519_PREFIX) :]
        if not text.startswith("ed25519:"):
            raise SignatureError(
                "a public key must look like 'ed25519:<base64 of 32 bytes>' (see `engine keygen`)"
            )
        raw = base64.b64decode(text.removeprefix("ed25519:"), validate=True)
    except (ValueError, binascii.Error) as e:
        raise SignatureError(f"malformed public key: {e}") from e
    if len(raw) != 32:
        raise SignatureError(
            f"malformed public key: An Ed25519 public key is 32 bytes long, found {len(raw)}"
        )
    return raw


def raw_trusted_keys(texts: Iterable[str]) -> RawTrustedKeys:
    """Key id → raw public key for pinned key texts (same ids as ``trusted_keys``); raise
    SignatureError on a malformed one."""
    keys = [raw_public_key(t) for t in texts]
    return {hashlib.sha256(k).hexdigest()[:16]: k for k in keys}


def verify_raw(data: bytes, signature_document: bytes, trusted: RawTrustedKeys) -> str:
    """``verify`` with raw trusted keys: check that a trusted key signed ``data``; return its
    key id. Raises SignatureError exactly where ``verify`` does."""
    keyid, signature = _trusted_signature(signature_document, trusted)
    try:
        valid = _ed25519.verify(trusted[keyid], signature, data)
    except _ed25519.BackendMissingError as e:
        raise SignatureError(str(e)) from e
    if not valid:
        raise SignatureError(f"signature by key {keyid} does not match the manifest bytes")
    return keyid
