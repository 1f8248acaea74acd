"""Managed config files and feature flags of one device, as the server hands them out.

A release declares config files (rendered by the engine from templates of
the operator repo) and a flag schema; the engine renders each device's files
and computes its effective flags. The device gets them as a ``ConfigBundle``
in its check-in answer and writes them, with ``flags.json``, in the same
transaction as the agent's files. ``config_digest`` names the whole bundle:
the device reports the digest it runs, the plan compares it with the desired
one (``reconfigure`` when they differ).

The digest is published (plans, the store, events), so it must not let anyone
test guesses of a secret: a file that holds secrets enters it by its ``mac``,
an HMAC keyed by the secrets file's ``digest_key``, never by its plain sha256
(docs/adr/0026-keyed-config-digests.md). The device cannot compute a ``mac``
(it has no key) and needs not: it checks each file against its ``sha256`` and
the digest over the entries it was given.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from states.manifest import validate_relative_path

__all__ = [
    "FLAGS_FILE",
    "ConfigBundle",
    "FlagValue",
    "RenderedFile",
    "config_digest",
    "flags_bytes",
]

#: The file the effective flags are written to, in the agent's config directory.
FLAGS_FILE = "flags.json"

#: A flag's value: a boolean, a number or a string.
FlagValue = bool | int | float | str

#: Largest rendered config file the wire carries (bytes of UTF-8 text).
MAX_FILE_BYTES = 1_000_000


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class RenderedFile(_Wire):
    """One rendered config file: where it goes in the config directory, its mode and text."""

    path: str
    mode: int = Field(default=0o640, ge=0, le=0o777)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    content: Annotated[str, Field(max_length=MAX_FILE_BYTES)]
    #: for a file that holds secrets: the keyed digest of its content, which the config
    #: digest covers instead of ``sha256`` (so the digest cannot be checked against guesses)
    mac: str | None = Field(default=None, pattern=r"^hmac-sha256:[0-9a-f]{64}$")

    @field_validator("path")
    @classmethod
    def _relative(cls, path: str) -> str:
        validate_relative_path(path)
        if path == FLAGS_FILE:
            raise ValueError(f"{FLAGS_FILE} is written by the runtime from the flags")
        return path

    @property
    def data(self) -> bytes:
        """The bytes written on the device."""
        return self.content.encode()

    @property
    def digest_entry(self) -> str:
        """What the config digest covers of this file's content: ``mac``, else ``sha256``."""
        return self.mac or self.sha256


class ConfigBundle(_Wire):
    """Everything the device's config directory should hold, and the digest naming it."""

    digest: str = Field(max_length=80)
    files: list[RenderedFile] = Field(default_factory=list, max_length=100)
    flags: dict[str, FlagValue] = Field(default_factory=dict)

    def computed_digest(self) -> str:
        """The digest of these files and flags (what ``digest`` must say)."""
        return config_digest(((f.path, f.mode, f.digest_entry) for f in self.files), self.flags)


def flags_bytes(flags: Mapping[str, FlagValue]) -> bytes:
    """The content of ``flags.json`` for ``flags``: sorted keys, one line, newline-terminated."""
    return (json.dumps(dict(flags), sort_keys=True) + "\n").encode()


def config_digest(files: Iterable[tuple[str, int, str]], flags: Mapping[str, FlagValue]) -> str:
    """``sha256:<hex>`` over each file's (path, mode, digest entry) and the flags file's bytes.

    A file's digest entry is the sha256 of its content, or ``hmac-sha256:<hex>``
    (``RenderedFile.mac``) for a file that holds secrets.
    """
    h = hashlib.sha256()
    for path, mode, sha in sorted(files):
        h.update(f"{path}\0{mode:o}\0{sha}\n".encode())
    h.update(b"flags\0")
    h.update(flags_bytes(flags))
    return "sha256:" + h.hexdigest()
