"""Signed release manifests: the kept copies of installed releases, and the plan's releases.

Every manifest is parsed through ``trust.parse_signed`` (signatures by the keys
trusted now: pinned, or listed by the root-signed keys document, which is
refreshed here); a kept copy that no longer verifies counts as absent.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from agent_runtime._keystore import KeyStore
from agent_runtime.config import DeviceConfig
from agent_runtime.effects import Clock, FileFetcher
from agent_runtime.errors import (
    AgentRuntimeError,
    DownloadError,
    ManifestError,
    PlanError,
    SignatureInvalidError,
)
from agent_runtime.fetch import is_url
from agent_runtime.plan_source import DesiredRelease, resolve_location
from agent_runtime.state import DeviceState, StateStore
from agent_runtime.trust import TrustContext, parse_signed
from fleetbase.version import Version
from states.keyring import KeyRing, KeysDocumentError
from states.manifest import ReleaseManifest

__all__ = ["MAX_SIGNATURE_BYTES", "SignedReleases", "kept_release"]

MAX_SIGNATURE_BYTES = 64 * 1024
#: Largest keys document read (a hundred keys take about 10 KiB).
MAX_KEYS_BYTES = 256 * 1024


def kept_release(states: StateStore, keys: KeyRing, version: Version) -> ReleaseManifest | None:
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
        keystore: KeyStore,
        states: StateStore,
        fetcher: FileFetcher,
        clock: Clock,
    ) -> None:
        self.config = config
        self.keystore = keystore
        self.states = states
        self.fetcher = fetcher
        self.clock = clock

    @property
    def keys(self) -> KeyRing:
        """The release keys trusted now (pinned, or listed by the accepted keys document)."""
        return self.keystore.ring(self.clock.now())

    def refresh_keys(self, desired: DesiredRelease, out: Callable[[str], None]) -> None:
        """Fetch the keys document the plan source names and keep it when newer; a failure
        leaves the keys trusted now in place (they are signed and expire by themselves)."""
        if desired.keys is None or self.keystore.root is None:
            return
        doc_at, sig_at = (resolve_location(loc, desired.base) for loc in desired.keys)
        try:
            data = self.fetcher.read_small(doc_at, MAX_KEYS_BYTES)
            signature = self.fetcher.read_small(sig_at, MAX_SIGNATURE_BYTES)
            if self.keystore.offer(data, signature, self.clock.now()):
                doc = self.keystore.current()
                assert doc is not None
                out(f"accepted keys document version {doc.version} from {doc_at}")
        except (AgentRuntimeError, KeysDocumentError, OSError) as e:
            out(f"keys document from {doc_at} not used: {e}")

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
