"""Adoption: identify an agent installed without the runtime by hashing its files.

A field install (files put in place by an old snippet, no runtime state) is
compared with signed release manifests, each verified against the pinned keys
first: the release whose files for this platform *all* match (path, size,
sha256) is adopted as installed and known-good, its manifest kept as if the
runtime had installed it. When none matches, the files that match no release
are copied to ``<state_dir>/adopt-backup/<stamp>/`` and the device says
``unknown``; the next converge installs its planned release over them.

Adoption never starts, stops or restarts the agent. With the ``process``
service manager, an agent already running from the agent root (started by
hand or by the old snippet) is taken into the pid file so that the runtime
supervises that very process.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from agent_runtime._fsutil import copy_durable
from agent_runtime.config import DeviceConfig
from agent_runtime.errors import ManifestError, ServerProtocolError
from agent_runtime.filecache import cache_files
from agent_runtime.layouts import Layout
from agent_runtime.layouts.in_place import NOT_RELEASE
from agent_runtime.server_client import ServerClient
from agent_runtime.state import Adoption, StateStore
from agent_runtime.trust import parse_signed
from fleetbase.platform import Platform
from states.keyring import KeyRing
from states.manifest import FileEntry, ReleaseManifest

__all__ = [
    "ADOPT_BACKUP_DIR",
    "AdoptingRuntime",
    "Adoption",
    "SignedRelease",
    "adopt",
    "identify",
    "local_releases",
    "server_releases",
    "verified_releases",
]

ADOPT_BACKUP_DIR = "adopt-backup"


class AdoptingRuntime(Protocol):
    """What ``adopt`` uses of ``converge.Runtime``."""

    config: DeviceConfig
    states: StateStore
    layout: Layout
    out: Callable[[str], None]

    @property
    def keys(self) -> KeyRing:
        """The release keys trusted now."""
        ...


@dataclass(frozen=True)
class SignedRelease:
    """A release as served: the manifest bytes and their detached signature."""

    version: str
    manifest: bytes
    signature: bytes


def server_releases(client: ServerClient) -> list[SignedRelease]:
    """Every signed release the server serves (unsigned ones cannot be trusted: skipped)."""
    out = []
    for version in client.release_versions():
        try:
            manifest, signature = client.release_files(version)
        except ServerProtocolError as e:
            if e.status == 404:  # no signature: nothing to trust it by
                continue
            raise
        out.append(SignedRelease(version, manifest, signature))
    return out


def local_releases(directory: Path) -> list[SignedRelease]:
    """Releases from ``directory``: every ``*.yaml`` with a ``.sig`` beside it."""
    out = []
    for path in sorted(directory.glob("*.yaml")):
        sig = path.with_name(path.name + ".sig")
        if sig.is_file():
            out.append(SignedRelease(path.stem, path.read_bytes(), sig.read_bytes()))
    return out


def verified_releases(
    releases: Iterable[SignedRelease], keys: KeyRing, out: Callable[[str], None]
) -> list[tuple[ReleaseManifest, SignedRelease]]:
    """The releases whose signature verifies with the pinned keys; others are named and
    skipped (a forged manifest must never make files look known-good)."""
    good: list[tuple[ReleaseManifest, SignedRelease]] = []
    for release in releases:
        try:
            manifest = parse_signed(
                release.manifest, release.signature, keys, f"release {release.version}"
            )
        except ManifestError as e:
            out(f"adopt: ignoring release {release.version}: {e}")
            continue
        good.append((manifest, release))
    return good


def _agent_files(root: Path) -> Iterator[str]:
    """Relative paths (POSIX) of the agent's files, without runtime leftovers."""
    if not root.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        if rel_dir == Path("."):
            dirnames[:] = [d for d in dirnames if d not in NOT_RELEASE and not d.startswith(".")]
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in filenames:
            if rel_dir == Path(".") and (name in NOT_RELEASE or name.startswith(".")):
                continue
            yield (rel_dir / name).as_posix()


class _Hashes:
    """sha256 and size of agent files, each read at most once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._seen: dict[str, tuple[int, str] | None] = {}

    def get(self, rel: str) -> tuple[int, str] | None:
        if rel not in self._seen:
            path = self.root / rel
            try:
                digest = hashlib.sha256()
                with path.open("rb") as f:
                    while chunk := f.read(1 << 20):
                        digest.update(chunk)
                self._seen[rel] = (path.stat().st_size, digest.hexdigest())
            except OSError:
                self._seen[rel] = None
        return self._seen[rel]

    def matches(self, entry: FileEntry) -> bool:
        return self.get(entry.path) == (entry.size, entry.sha256)


def identify(
    root: Path, platform: Platform, releases: Iterable[ReleaseManifest]
) -> tuple[ReleaseManifest | None, list[str]]:
    """The release whose files for ``platform`` all match those under ``root`` (the highest
    serial when several do), and the agent files that match no release's entry."""
    hashes = _Hashes(root)
    ordered = sorted(releases, key=lambda r: r.serial, reverse=True)
    found: ReleaseManifest | None = None
    known: set[tuple[str, int, str]] = set()
    for release in ordered:
        files = release.platforms.get(platform)
        if files is None or not files.files:
            continue
        known.update((e.path, e.size, e.sha256) for e in files.files)
        if found is None and all(hashes.matches(e) for e in files.files):
            found = release
    unmatched = []
    for rel in _agent_files(root):
        got = hashes.get(rel)
        if got is None or (rel, *got) not in known:
            unmatched.append(rel)
    return found, sorted(unmatched)


def _backup(root: Path, files: list[str], dest: Path) -> None:
    for rel in files:
        src = root / rel
        copy_durable(src, dest / rel, src.stat().st_mode & 0o777)


def adopt(runtime: AdoptingRuntime, releases: Iterable[SignedRelease], now: datetime) -> Adoption:
    """Identify the agent under the runtime's agent root and record the result in its state.

    Idempotent: a device whose state already records an installed release or an
    adoption is not examined again (its recorded result is returned).
    """
    config = runtime.config
    states = runtime.states
    state = states.load()
    if state.adoption is not None and state.adoption.version == state.installed:
        return state.adoption
    if state.installed is not None:
        return Adoption(
            status="known",
            version=state.installed,
            detail=f"{state.installed} is installed and managed by the runtime already",
            at=now,
        )
    root = config.agent_root
    if not runtime.layout.has_files():
        return Adoption(status="empty", detail=f"no agent files in {root}", at=now)
    verified = verified_releases(releases, runtime.keys, runtime.out)
    if not verified:  # nothing to compare with: record nothing, back up nothing
        return Adoption(status="unknown", detail="no signed release to compare with", at=now)
    found, unmatched = identify(root, config.platform, [m for m, _ in verified])
    if found is not None:
        files = found.platforms[config.platform]
        signed = next(s for m, s in verified if m is found)
        states.keep_manifest(found.version, signed.manifest, signed.signature)
        state.installed = state.known_good = found.version
        state.adopted_from = "hash"
        state.highest_serial = max(state.highest_serial, found.serial)
        state.file_cache = cache_files(runtime.layout, found.version, files.files)
        adoption = Adoption(
            status="known",
            version=found.version,
            detail=f"the {len(files.files)} files in {root} are release {found.version}",
            unmatched=unmatched,
            at=now,
        )
    else:
        dest = config.state_dir / ADOPT_BACKUP_DIR / now.strftime("%Y%m%dT%H%M%SZ")
        _backup(root, unmatched, dest)
        adoption = Adoption(
            status="unknown",
            detail=f"the files in {root} match none of {len(verified)} signed releases; "
            f"{len(unmatched)} backed up to {dest}",
            unmatched=unmatched,
            backup=str(dest),
            at=now,
        )
    state.adoption = adoption
    states.save(state)
    return adoption
