"""Signed release manifests: the kept copies of installed releases, and the plan's releases.

Every manifest is parsed through ``trust.parse_signed`` (signature by a pinned
key); a kept copy that no longer verifies counts as absent.
"""

from __future__ import annotations

from pathlib import Path

from agent_runtime.config import DeviceConfig
from agent_runtime.effects import Clock, FileFetcher
from agent_runtime.errors import DownloadError, ManifestError, PlanError, SignatureInvalidError
from agent_runtime.fetch import is_url
from agent_runtime.plan_source import DesiredRelease, resolve_location
from agent_runtime.state import DeviceState, StateStore
from agent_runtime.trust import TrustContext, parse_signed
from fleetbase.version import Version
from states.manifest import ReleaseManifest
from states.signing import RawTrustedKeys

__all__ = ["MAX_SIGNATURE_BYTES", "SignedReleases", "kept_release"]

MAX_SIGNATURE_BYTES = 64 * 1024


def kept_release(
    states: StateStore, keys: RawTrustedKeys, version: Version
) -> ReleaseManifest | None:
    """The kept manifest of ``version`` when it is there and still verifies; else None."""
    kept = states.kept_manifest(version)
    if kept is None:
        return None
    try:
        return parse_signed(kept[0], kept[1], keys, str(states.manifest_paths(version)[0]))
    except ManifestError:
        return None


class SignedReleases:
    """Reads the manifests a converge needs: kept ones, and the plan's desired release."""

    def __init__(
        self,
        config: DeviceConfig,
        keys: RawTrustedKeys,
        states: StateStore,
        fetcher: FileFetcher,
        clock: Clock,
    ) -> None:
        self.config = config
        self.keys = keys
        self.states = states
        self.fetcher = fetcher
        self.clock = clock

    def kept(self, version: Version) -> ReleaseManifest | None:
        """The kept, still verifying manifest of ``version``, if any."""
        return kept_release(self.states, self.keys, version)

    def plan_bytes(self, desired: DesiredRelease) -> tuple[bytes, bytes]:
        """The desired release's manifest and signature as the plan locates them.

        Raises PlanError (no release entry), DownloadError, or SignatureInvalidError
        when the signature is missing (an unsigned release is refused).
        """
        ref = desired.release
        if ref is None:
            raise PlanError(f"the plan names no release entry for {desired.device.desired}")
        limit = self.config.download.max_manifest_bytes
        m = self.fetcher.read_small(resolve_location(ref.manifest, desired.base), limit)
        sig_at = resolve_location(ref.signature, desired.base)
        try:
            s = self.fetcher.read_small(sig_at, MAX_SIGNATURE_BYTES)
        except DownloadError as e:
            missing = e.status == 404 or (not is_url(sig_at) and not Path(sig_at).exists())
            if missing:
                raise SignatureInvalidError(
                    f"{ref.manifest}: no signature at {sig_at}: refusing an unsigned release"
                ) from e
            raise
        return m, s

    def plan_manifest(self, desired: DesiredRelease) -> tuple[ReleaseManifest, bytes, bytes]:
        """The desired release's verified manifest, with its bytes and signature."""
        m, s = self.plan_bytes(desired)
        ref = desired.release
        assert ref is not None
        return parse_signed(m, s, self.keys, ref.manifest), m, s

    def trust(self, state: DeviceState) -> TrustContext:
        """What a new manifest is checked against: keys, platform, serial, the installed one."""
        installed = self.kept(state.installed) if state.installed is not None else None
        return TrustContext(
            keys=self.keys,
            platform=self.config.platform,
            now=self.clock.now(),
            highest_serial=state.highest_serial,
            installed=installed,
        )
