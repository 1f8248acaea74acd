"""The signed list of release-signing keys, and the keys a device trusts at a given moment.

Devices pin one or more *root* keys (kept offline by the operator). A root key
signs the *keys document* (``keys/keys.json`` in the operator repo, served by
``engine serve`` at ``/v1/keys``)::

    {"kind": "release-keys", "version": 3, "expires": "2027-06-01T00:00:00Z",
     "threshold": 1,
     "keys": {"<key id>": {"public": "ed25519:<base64>", "expires": null}},
     "revoked": ["<key id>"]}

A release is accepted when ``threshold`` distinct listed, unexpired keys signed
its manifest. Like TUF's root and targets delegation, the document has a
version that only grows (an older document is refused: no rollback to a
revoked key) and an expiry (a frozen, stale document stops being trusted).
Its signature file has the same format as a release's (``states.signing``).

A device config with ``trusted_keys`` and no root keys keeps working: its keys
form a ring of threshold 1, as before this document existed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from states.signing import RawTrustedKeys, SignatureError, raw_public_key, verify_raw

__all__ = [
    "KEYS_DOCUMENT",
    "KEYS_PATH",
    "KeyEntry",
    "KeyRing",
    "KeysDocument",
    "KeysDocumentError",
    "RootOfTrust",
    "accept_keys_document",
    "raw_key_id",
]

#: File name of the keys document (in the operator repo's ``keys/`` and the device's state).
KEYS_DOCUMENT = "keys.json"
#: Where ``engine serve`` serves it (and ``KEYS_PATH + "/signature"`` its signature).
KEYS_PATH = "/v1/keys"


class KeysDocumentError(SignatureError):
    """The keys document is unsigned, malformed, expired, or older than the one trusted."""


def raw_key_id(raw: bytes) -> str:
    """The key id of a raw public key (16 hex digits of its sha256), as in signature files."""
    return hashlib.sha256(raw).hexdigest()[:16]


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise ValueError("a time needs a time zone, e.g. 2027-01-01T00:00:00Z")
    return value


class KeyEntry(BaseModel):
    """One release-signing key the root delegates to, with an optional end of validity."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    public: str = Field(description="ed25519:<base64 of the 32-byte public key>")
    expires: datetime | None = Field(default=None, description="not trusted from this instant")

    @field_validator("public")
    @classmethod
    def _usable(cls, text: str) -> str:
        try:
            raw_public_key(text)
        except SignatureError as e:
            raise ValueError(str(e)) from e
        return text

    @field_validator("expires")
    @classmethod
    def _expires_aware(cls, value: datetime | None) -> datetime | None:
        return _aware(value)

    @property
    def raw(self) -> bytes:
        """The raw 32 bytes of the public key."""
        return raw_public_key(self.public)


class KeysDocument(BaseModel):
    """The root-signed list of release-signing keys and how many must sign a release."""

    # A device may read a document written by a newer engine: unknown keys are ignored.
    model_config = ConfigDict(extra="ignore", frozen=True)
    kind: Literal["release-keys"] = "release-keys"
    version: int = Field(ge=1, le=2**53, description="grows by one with every change")
    expires: datetime = Field(description="devices stop trusting the document at this instant")
    threshold: int = Field(ge=1, le=100, description="distinct keys that must sign a release")
    keys: dict[str, KeyEntry] = Field(max_length=100)
    revoked: list[str] = Field(default_factory=list, max_length=1000)

    @field_validator("expires")
    @classmethod
    def _expires_aware(cls, value: datetime) -> datetime:
        _aware(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> KeysDocument:
        for keyid, entry in self.keys.items():
            actual = raw_key_id(entry.raw)
            if keyid != actual:
                raise ValueError(f"keys.{keyid}: the id of this public key is {actual}")
        listed_revoked = sorted(set(self.keys) & set(self.revoked))
        if listed_revoked:
            raise ValueError(f"key(s) {', '.join(listed_revoked)} are both listed and revoked")
        if self.threshold > len(self.keys):
            raise ValueError(
                f"threshold {self.threshold} is more than the {len(self.keys)} key(s) listed: "
                "no release could ever be accepted"
            )
        return self

    def ring(self, now: datetime) -> KeyRing:
        """The keys that count at ``now``: listed, not revoked, not expired."""
        where = f"keys document version {self.version}"
        if self.expires <= now:
            return KeyRing({}, self.threshold, f"{where} expired at {self.expires.isoformat()}")
        keys = {
            keyid: entry.raw
            for keyid, entry in self.keys.items()
            if entry.expires is None or entry.expires > now
        }
        return KeyRing(keys, self.threshold, where)

    def to_bytes(self) -> bytes:
        """The document as the JSON bytes that are signed (stable key order)."""
        data = self.model_dump(mode="json")
        return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def parse(cls, data: bytes) -> KeysDocument:
        """Parse document bytes; KeysDocumentError naming the field that is wrong."""
        try:
            return cls.model_validate_json(data)
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(p) for p in err["loc"]) or "(top)"
            msg = str(err["msg"]).removeprefix("Value error, ")
            raise KeysDocumentError(f"keys document: {loc}: {msg}") from e


@dataclass(frozen=True)
class KeyRing:
    """The release keys a device trusts now and how many of them must sign."""

    keys: RawTrustedKeys
    threshold: int = 1
    #: where the keys come from, for messages ("trusted_keys", "keys document version 3")
    origin: str = "trusted_keys"

    @classmethod
    def pinned(cls, keys: RawTrustedKeys) -> KeyRing:
        """Keys pinned directly in a device config: any one of them suffices (threshold 1)."""
        return cls(keys, 1, "trusted_keys")

    def verify(self, data: bytes, signature: bytes) -> list[str]:
        """Ids of the trusted keys that signed ``data``; SignatureError below the threshold."""
        if not self.keys:
            raise SignatureError(f"no release signing key is trusted ({self.origin})")
        return verify_raw(data, signature, self.keys, self.threshold)


@dataclass(frozen=True)
class RootOfTrust:
    """The root keys a device pins, and how many must sign a keys document."""

    keys: RawTrustedKeys
    threshold: int = 1

    @classmethod
    def from_texts(cls, texts: list[str], threshold: int = 1) -> RootOfTrust:
        """Root keys from their ``ed25519:<base64>`` texts; SignatureError on a bad one."""
        keys: RawTrustedKeys = {}
        for text in texts:
            raw = raw_public_key(text)
            keys[raw_key_id(raw)] = raw
        if not 1 <= threshold <= len(keys):
            raise SignatureError(
                f"root threshold {threshold} needs between 1 and {len(keys)} distinct root keys"
            )
        return cls(keys, threshold)


def accept_keys_document(
    data: bytes,
    signature: bytes,
    root: RootOfTrust,
    now: datetime,
    current: KeysDocument | None,
) -> KeysDocument:
    """Verify a keys document against the root and the one trusted now; return it.

    Raises KeysDocumentError when fewer than the root threshold signed it, it is
    malformed or expired, its version is below ``current``'s, or it reuses
    ``current``'s version with different content.
    """
    try:
        verify_raw(data, signature, root.keys, root.threshold)
    except SignatureError as e:
        raise KeysDocumentError(f"keys document not signed by the root: {e}") from e
    doc = KeysDocument.parse(data)
    if doc.expires <= now:
        raise KeysDocumentError(
            f"keys document version {doc.version} expired at {doc.expires.isoformat()}"
        )
    if current is not None:
        if doc.version < current.version:
            raise KeysDocumentError(
                f"keys document version {doc.version} is older than version {current.version} "
                "trusted already (a rollback to keys since revoked?)"
            )
        if doc.version == current.version and doc != current:
            raise KeysDocumentError(
                f"keys document version {doc.version} differs from the version "
                f"{current.version} trusted already: a new document needs a new version"
            )
    return doc
