"""Detached ed25519 signatures of release manifests.

A manifest file is signed byte for byte; the signature file beside it
(``<manifest>.sig``) is JSON::

    {"signatures": [{"keyid": "<16 hex>", "algorithm": "ed25519", "sig": "<base64>"}]}

A list, so that a release can carry the signatures of an old and a new key
while devices' pinned keys are rotated. The key id is the first 16 hex digits
of the sha256 of the raw 32-byte public key.

This module holds what engine and runtime share: the document format and
verification with raw keys (``raw_trusted_keys``, ``verify_raw``), which uses
the system's OpenSSL through ``states._ed25519`` and keeps ``cryptography``
(≈8 MB resident) out of the runtime's process. Key objects, key generation and
signing need ``cryptography`` and live on the engine side, in
``engine.signing``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable, Collection, Iterable

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from states import _ed25519

__all__ = [
    "SIGNATURE_SUFFIX",
    "RawTrustedKeys",
    "SignatureDocument",
    "SignatureEntry",
    "SignatureError",
    "count_valid",
    "key_id_of",
    "raw_public_key",
    "raw_trusted_keys",
    "refuse_weak_key",
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


def key_id_of(raw_key: bytes) -> str:
    """The short identifier of a raw 32-byte public key (16 hex digits of its sha256)."""
    return hashlib.sha256(raw_key).hexdigest()[:16]


#: Key id → raw 32-byte ed25519 public key (``verify_raw``: no ``cryptography`` needed).
RawTrustedKeys = dict[str, bytes]


def _signature_entries(signature_document: bytes, trusted: Collection[str]) -> SignatureDocument:
    """The parsed document; SignatureError when nothing is trusted or it is malformed."""
    if not trusted:
        raise SignatureError("no trusted keys are configured: refusing every manifest")
    try:
        return SignatureDocument.model_validate_json(signature_document)
    except ValidationError as e:
        raise SignatureError(f"malformed signature file: {e.errors()[0]['msg']}") from e


def count_valid(
    data: bytes,
    signature_document: bytes,
    trusted: Collection[str],
    threshold: int,
    check: Callable[[str, bytes, bytes], bool],
) -> list[str]:
    """Key ids of the distinct trusted keys whose signature over ``data`` is valid.

    Every entry is tried (a stale or broken entry never hides a valid one); a key
    counts once however often it appears; ``check(keyid, signature, data)`` decides
    one signature. Raises SignatureError when fewer than ``threshold`` keys signed,
    saying what was wrong with each entry.
    """
    if threshold < 1:
        raise RuntimeError(f"a signature threshold is at least 1, got {threshold}")
    doc = _signature_entries(signature_document, trusted)
    valid: list[str] = []
    bad: list[str] = []
    for entry in doc.signatures:
        if entry.keyid not in trusted or entry.algorithm != "ed25519" or entry.keyid in valid:
            continue
        try:
            signature = base64.b64decode(entry.sig, validate=True)
        except (ValueError, binascii.Error):
            signature = b""
        if check(entry.keyid, signature, data):
            valid.append(entry.keyid)
        else:
            bad.append(f"signature by key {entry.keyid} does not match the manifest bytes")
    if len(valid) >= threshold:
        return valid
    if not valid and not bad:
        ids = ", ".join(s.keyid for s in doc.signatures)
        raise SignatureError(f"signed by unknown key(s) {ids}; trusted: {', '.join(trusted)}")
    if threshold == 1:
        raise SignatureError("; ".join(bad))
    why = "; ".join(bad) if bad else "the other signatures are by keys that are not trusted"
    raise SignatureError(
        f"signed by {len(valid)} of the {threshold} trusted keys required "
        f"({', '.join(valid) or 'none'}): {why}"
    )


def refuse_weak_key(raw: bytes) -> None:
    """SignatureError when the raw key is not a usable ed25519 public key (small order, ...)."""
    problem = _ed25519.public_key_problem(raw)
    if problem is not None:
        raise SignatureError(f"refused public key: {problem}")


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
    refuse_weak_key(raw)
    return raw


def raw_trusted_keys(texts: Iterable[str]) -> RawTrustedKeys:
    """Key id → raw public key for pinned key texts (same ids as ``trusted_keys``); raise
    SignatureError on a malformed one."""
    keys = [raw_public_key(t) for t in texts]
    return {key_id_of(k): k for k in keys}


def verify_raw(
    data: bytes, signature_document: bytes, trusted: RawTrustedKeys, threshold: int = 1
) -> list[str]:
    """The ids of the trusted keys whose signatures over ``data`` match, at least
    ``threshold`` of them (raw keys: no ``cryptography``). Raises SignatureError otherwise."""

    def check(keyid: str, signature: bytes, payload: bytes) -> bool:
        try:
            return _ed25519.verify(trusted[keyid], signature, payload)
        except _ed25519.BackendMissingError as e:
            raise SignatureError(str(e)) from e

    return count_valid(data, signature_document, trusted, threshold, check)
