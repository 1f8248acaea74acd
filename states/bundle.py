"""Runtime bundles: a directory of wheels that installs ``agent-runtime`` offline.

``engine runtime bundle`` writes one directory per target
(``<platform>-<arch>-py<X.Y>``) holding the runtime's wheel, the wheels of its
dependencies, ``bundle.json`` (what the directory holds: each file's name,
sha256 and size) and ``bundle.json.sig`` (a detached signature in the format
of release signatures, see ``states.signing``). A bundle is accepted only when
the manifest's signature is by a trusted key and the directory holds exactly
the files it lists, byte for byte: nothing missing, nothing extra.

The bootstrap script carries its own standard-library copy of this check; this
one is the reference the engine and the tests use.
"""

from __future__ import annotations

import hashlib
import platform as _platform
import re
import sys
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from states.signing import SIGNATURE_SUFFIX, RawTrustedKeys, SignatureError, verify_raw

__all__ = [
    "BUNDLE_FORMAT_VERSION",
    "MANIFEST_NAME",
    "SIGNATURE_NAME",
    "TARGET_RE",
    "BundleError",
    "BundleFile",
    "BundleManifest",
    "file_sha256",
    "local_target_name",
    "read_manifest",
    "verify_bundle",
]

BUNDLE_FORMAT_VERSION = 1
MANIFEST_NAME = "bundle.json"
SIGNATURE_NAME = MANIFEST_NAME + SIGNATURE_SUFFIX

#: A target name: ``<platform>-<arch>-py<X.Y>``, e.g. ``linux-x86_64-py3.11``.
TARGET_RE = re.compile(r"^(linux|macos|windows)-([a-z0-9_]{1,20})-py(3\.[0-9]{1,2})$")

#: A file of a bundle: one path component, a wheel.
_FILE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,250}\.whl$")

_CHUNK = 1 << 20
#: ``sys.platform`` -> the platform part of a target name.
_SYS_PLATFORMS = {"linux": "linux", "darwin": "macos", "win32": "windows"}


def local_target_name() -> str | None:
    """This machine's and interpreter's target, e.g. ``linux-x86_64-py3.11`` (None on a
    platform bundles do not exist for)."""
    platform = _SYS_PLATFORMS.get(sys.platform)
    if platform is None:
        return None
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    return f"{platform}-{_platform.machine().lower()}-py{python}"


class BundleError(Exception):
    """A bundle is unsigned, badly signed, malformed, or its files do not match."""


class BundleFile(BaseModel):
    """One wheel of a bundle."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    name: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)

    @field_validator("name")
    @classmethod
    def _one_wheel_name(cls, value: str) -> str:
        if not _FILE_NAME_RE.match(value):
            raise ValueError(f"{value[:80]!r} is not the file name of a wheel")
        return value


class BundleManifest(BaseModel):
    """``bundle.json``: what one target's bundle holds (unknown fields of newer engines pass)."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    format_version: int
    target: str = Field(pattern=TARGET_RE.pattern)
    platform: str
    arch: str
    python: str
    runtime_version: str
    created: datetime
    files: list[BundleFile] = Field(min_length=1)

    @field_validator("format_version")
    @classmethod
    def _known_format(cls, value: int) -> int:
        if value != BUNDLE_FORMAT_VERSION:
            raise ValueError(f"format_version {value} is not supported (expected 1)")
        return value


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(data: bytes, origin: str = MANIFEST_NAME) -> BundleManifest:
    """Parse ``bundle.json`` bytes; raise BundleError naming ``origin`` and the bad field."""
    try:
        manifest = BundleManifest.model_validate_json(data)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        where = ".".join(str(p) for p in err["loc"]) or "(document)"
        raise BundleError(f"{origin}: {where}: {err['msg']}") from e
    names = [f.name for f in manifest.files]
    if len(set(names)) != len(names):
        raise BundleError(f"{origin}: files: a file is listed twice")
    return manifest


def verify_bundle(directory: Path, trusted: RawTrustedKeys | None) -> BundleManifest:
    """Check the bundle in ``directory`` and return its manifest.

    With ``trusted`` keys, ``bundle.json.sig`` must hold a valid signature of
    ``bundle.json`` by one of them; ``None`` skips the signature (an engine
    checking its own output). Then the directory must hold exactly the listed
    files with their sizes and sha256s. Raises BundleError saying what is wrong.
    """
    manifest_path = directory / MANIFEST_NAME
    try:
        data = manifest_path.read_bytes()
    except OSError as e:
        raise BundleError(f"{manifest_path}: cannot read: {e.strerror}") from e
    if trusted is not None:
        _check_signature(directory, data, trusted)
    manifest = read_manifest(data, str(manifest_path))
    listed = {f.name: f for f in manifest.files}
    try:
        present = {p.name for p in directory.iterdir()} - {MANIFEST_NAME, SIGNATURE_NAME}
    except OSError as e:
        raise BundleError(f"{directory}: cannot list: {e.strerror}") from e
    if missing := sorted(listed.keys() - present):
        raise BundleError(f"{directory}: missing file(s) listed in {MANIFEST_NAME}: {missing}")
    if extra := sorted(present - listed.keys()):
        raise BundleError(f"{directory}: file(s) not listed in {MANIFEST_NAME}: {extra}")
    for entry in manifest.files:
        _check_file(directory / entry.name, entry)
    return manifest


def _check_signature(directory: Path, data: bytes, trusted: RawTrustedKeys) -> None:
    signature_path = directory / SIGNATURE_NAME
    try:
        signature = signature_path.read_bytes()
    except FileNotFoundError as e:
        raise BundleError(f"{signature_path}: missing: the bundle is not signed") from e
    except OSError as e:
        raise BundleError(f"{signature_path}: cannot read: {e.strerror}") from e
    try:
        verify_raw(data, signature, trusted)
    except SignatureError as e:
        raise BundleError(f"{directory / MANIFEST_NAME}: {e}") from e


def _check_file(path: Path, entry: BundleFile) -> None:
    if path.is_symlink() or not path.is_file():
        raise BundleError(f"{path}: not a regular file")
    size = path.stat().st_size
    if size != entry.size:
        raise BundleError(f"{path}: {size} bytes, {MANIFEST_NAME} says {entry.size}")
    actual = file_sha256(path)
    if actual != entry.sha256:
        raise BundleError(f"{path}: sha256 {actual} does not match {MANIFEST_NAME} {entry.sha256}")
