"""Decide whether a release may be installed, before anything is downloaded.

Pure: bytes, the trusted key ring, the clock's reading and the device's memory in,
a verified ``ReleaseManifest`` out (or a ``ManifestError``). Order: signature,
parse, version, expiry, serial / rollback authorisation, platform.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import yaml
from pydantic import ValidationError

from agent_runtime.errors import (
    DowngradeError,
    ExpiredManifestError,
    ManifestError,
    SignatureInvalidError,
)
from fleetbase.platform import Platform
from fleetbase.version import Version
from states.keyring import KeyRing
from states.manifest import PlatformRelease, ReleaseManifest
from states.signing import SignatureError

__all__ = ["TrustContext", "check_release", "parse_signed"]


@dataclass(frozen=True)
class TrustContext:
    """What the device knows when it judges a release."""

    keys: KeyRing
    platform: Platform
    now: datetime
    highest_serial: int
    #: verified manifest of the release installed now (None: nothing installed or adopted)
    installed: ReleaseManifest | None


def parse_signed(manifest: bytes, signature: bytes, keys: KeyRing, where: str) -> ReleaseManifest:
    """Verify that the threshold of trusted keys signed ``manifest``, then parse it.

    Raises SignatureInvalidError or ManifestError naming ``where``.
    """
    try:
        keyid = ", ".join(keys.verify(manifest, signature))
    except SignatureError as e:
        raise SignatureInvalidError(f"{where}: {e}") from e
    try:
        data: Any = yaml.safe_load(manifest)
    except yaml.YAMLError as e:
        raise ManifestError(f"{where}: signed manifest (key {keyid}) is not YAML: {e}") from e
    if not isinstance(data, dict):
        raise ManifestError(
            f"{where}: signed manifest must be a mapping, found {type(data).__name__}"
        )
    try:
        return ReleaseManifest.parse_served(data)
    except (ValidationError, ValueError) as e:
        if isinstance(e, ValidationError):
            err = e.errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            raise ManifestError(f"{where}: field {loc}: {err['msg']}") from e
        raise ManifestError(f"{where}: {e}") from e


def check_release(
    manifest: bytes,
    signature: bytes,
    *,
    desired: Version,
    ctx: TrustContext,
    where: str,
    local_restore: bool = False,
) -> tuple[ReleaseManifest, PlatformRelease]:
    """Return the verified manifest of ``desired`` and its files for this platform.

    ``local_restore`` marks the device's own backup of a release it ran before:
    always allowed, so expiry and serial are not checked (the signature is).
    Raises SignatureInvalidError, ExpiredManifestError, DowngradeError or
    ManifestError.
    """
    release = parse_signed(manifest, signature, ctx.keys, where)
    if release.version != desired:
        raise ManifestError(
            f"{where}: manifest is for version {release.version}, the plan wants {desired}"
        )
    if not local_restore:
        if release.expires <= ctx.now:
            raise ExpiredManifestError(
                f"{where}: release {release.version} expired at {release.expires.isoformat()} "
                f"(now {ctx.now.isoformat()})"
            )
        if release.serial < ctx.highest_serial:
            authorised = ctx.installed is not None and desired in ctx.installed.rollback_to
            if not authorised:
                by = (
                    f"installed release {ctx.installed.version} authorises rollback only to "
                    f"{[str(v) for v in ctx.installed.rollback_to]}"
                    if ctx.installed is not None
                    else "no installed signed release authorises it"
                )
                raise DowngradeError(
                    f"{where}: serial {release.serial} of {release.version} is below the highest "
                    f"serial seen ({ctx.highest_serial}) and {by}"
                )
    files = release.platforms.get(ctx.platform)
    if files is None:
        raise ManifestError(
            f"{where}: release {release.version} has no files for platform {ctx.platform}; "
            f"it has {sorted(str(p) for p in release.platforms)}"
        )
    return release, files
