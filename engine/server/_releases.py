"""Releases the server hands out: signed manifest bytes, and artifact files by sha256.

Manifests come from the store's ``releases`` table (written by ``engine
apply``), so every replica serves the same bytes; a release not recorded
there is read from the operator repo's ``releases/`` directory. Artifacts are
files under ``<repo>/artifacts/``, found by the sha256 the manifests declare
for them.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml
from sqlalchemy import Connection, select

from engine.store.schema import releases
from fleetbase.platform import Platform
from states.keyring import KEYS_DOCUMENT
from states.manifest import FileEntry, ReleaseManifest

__all__ = ["ArtifactIndex", "KeysFile", "Release", "ReleaseSource"]

log = logging.getLogger("engine.server")

#: How often (seconds) a miss may re-read the store for releases recorded since.
_REFRESH_SECONDS = 2.0


@dataclass(frozen=True)
class Release:
    """One release as served: the exact signed bytes and the parsed manifest."""

    version: str
    serial: int
    manifest_bytes: bytes
    signature: bytes | None
    manifest: ReleaseManifest

    def file(self, platform: Platform, path: str) -> FileEntry | None:
        """The manifest's entry for ``path`` on ``platform``, or None."""
        files = self.manifest.platforms.get(platform)
        if files is None:
            return None
        for entry in files.files:
            if entry.path == path:
                return entry
        return None


def _parse(version: str, data: bytes, signature: bytes | None) -> Release:
    manifest = ReleaseManifest.parse_served(yaml.safe_load(data))
    return Release(str(manifest.version), manifest.serial, data, signature, manifest)


#: Reads recorded releases: (version or None for all) -> rows of
#: (version, serial, manifest bytes, signature bytes or None).
StoreReader = Callable[[str | None], list[tuple[str, int, bytes, bytes | None]]]


class ReleaseSource:
    """Releases by version: the store first, then the repo's files (read at startup)."""

    def __init__(self, repo_root: Path, read_store: StoreReader) -> None:
        """Index the repo's ``releases/*.yaml``; ``read_store`` reads the store's table."""
        self._read_store = read_store
        self._stored: dict[str, Release] = {}
        self._repo: dict[str, Release] = {}
        self._checked_at = 0.0
        directory = repo_root / "releases"
        for path in sorted(directory.glob("*.yaml")) if directory.is_dir() else []:
            sig = path.with_name(path.name + ".sig")
            try:
                release = _parse(
                    path.stem, path.read_bytes(), sig.read_bytes() if sig.is_file() else None
                )
            except (OSError, ValueError, yaml.YAMLError) as e:
                log.warning("%s: not served, cannot be read: %s", path, e)
                continue
            self._repo[release.version] = release

    def get(self, version: str) -> Release | None:
        """The release ``version`` (store first, then repo), or None.

        The store is read every time (one indexed row): ``engine apply`` may
        record a release again, e.g. re-signed; parsing is cached by bytes.
        """
        rows = self._read_store(version)
        if rows:
            self._remember(rows)
            return self._stored.get(version)
        return self._repo.get(version)

    def recorded(self) -> list[Release]:
        """Every release recorded in the store (applied), oldest serial first."""
        self._remember(self._read_store(None))
        return sorted(self._stored.values(), key=lambda r: r.serial)

    def all(self) -> list[Release]:
        """Every known release, store and repo, oldest serial first."""
        known = dict(self._repo)
        known.update({r.version: r for r in self.recorded()})
        return sorted(known.values(), key=lambda r: r.serial)

    def refresh(self) -> bool:
        """Re-read the store's releases if the last read is older than a moment; True if read."""
        now = time.monotonic()
        if now - self._checked_at < _REFRESH_SECONDS:
            return False
        self._checked_at = now
        self.recorded()
        return True

    def _remember(self, rows: list[tuple[str, int, bytes, bytes | None]]) -> None:
        for version, _serial, data, signature in rows:
            known = self._stored.get(version)
            if known is not None and (known.manifest_bytes, known.signature) == (data, signature):
                continue
            try:
                self._stored[version] = _parse(version, data, signature)
            except (ValueError, yaml.YAMLError) as e:
                log.error("release %s recorded in the store cannot be parsed: %s", version, e)


def read_releases_table(
    conn: Connection, version: str | None
) -> list[tuple[str, int, bytes, bytes | None]]:
    """Rows (version, serial, manifest, signature) of the store's ``releases`` table."""
    query = select(releases.c.version, releases.c.serial, releases.c.manifest, releases.c.signature)
    if version is not None:
        query = query.where(releases.c.version == version)
    return [
        (str(v), int(s), bytes(m), None if sig is None else bytes(sig))
        for v, s, m, sig in conn.execute(query)
    ]


class ArtifactIndex:
    """sha256 -> file under ``<repo>/artifacts/``, from every known release's file list.

    A file is hashed once (on first request, cached by size and mtime) so that a
    changed file on disk is never served under a hash it no longer has.
    """

    def __init__(self, artifacts_dir: Path, releases: ReleaseSource) -> None:
        """Index the files of every release ``releases`` knows."""
        self.root = artifacts_dir.resolve()
        self._releases = releases
        self._index: dict[str, list[Path]] = {}
        self._verified: dict[Path, tuple[int, int, str]] = {}
        self._add(releases.all())

    def _add(self, releases: list[Release]) -> None:
        for release in releases:
            for files in release.manifest.platforms.values():
                for entry in files.files:
                    if entry.source.startswith(("http://", "https://")):
                        continue
                    path = (self.root / entry.source).resolve()
                    if not path.is_relative_to(self.root):
                        continue
                    paths = self._index.setdefault(entry.sha256, [])
                    if path not in paths:
                        paths.append(path)

    def candidates(self, sha256: str) -> list[Path]:
        """Files declared with ``sha256`` (re-reading new releases on a miss), maybe none."""
        hit = self._index.get(sha256)
        if hit is None and self._releases.refresh():
            self._add(self._releases.recorded())
            hit = self._index.get(sha256)
        return [] if hit is None else hit

    def find(self, sha256: str) -> Path | None:
        """A file that still hashes to ``sha256``, or None (hashes each file at most once
        per version of it: a blocking call, run it off the event loop)."""
        for path in self.candidates(sha256):
            if self.verified(sha256, path):
                return path
        return None

    def verified(self, sha256: str, path: Path) -> bool:
        """True when ``path`` still hashes to ``sha256`` (hashes at most once per version of it)."""
        try:
            st = path.stat()
        except OSError:
            return False
        cached = self._verified.get(path)
        if cached is not None and cached[:2] == (st.st_size, st.st_mtime_ns):
            return cached[2] == sha256
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        self._verified[path] = (st.st_size, st.st_mtime_ns, digest.hexdigest())
        return digest.hexdigest() == sha256


class KeysFile:
    """The operator repo's root-signed keys document (``keys/keys.json`` and its ``.sig``).

    Read again whenever either file changes on disk (``engine keys rotate`` in
    the repo takes effect without a restart). The server does not judge it:
    devices verify it against their pinned root keys.
    """

    def __init__(self, repo_root: Path) -> None:
        """Serve ``<repo_root>/keys/keys.json``."""
        self.document = repo_root / "keys" / KEYS_DOCUMENT
        self.signature = self.document.with_name(KEYS_DOCUMENT + ".sig")
        self._seen: tuple[tuple[int, int], ...] | None = None
        self._content: tuple[bytes, bytes] | None = None

    def read(self) -> tuple[bytes, bytes] | None:
        """(document, signature) bytes, or None when the repo has no signed keys document."""
        try:
            stamp = tuple(
                (st.st_mtime_ns, st.st_size) for st in (self.document.stat(), self.signature.stat())
            )
            if stamp != self._seen:
                self._content = (self.document.read_bytes(), self.signature.read_bytes())
                self._seen = stamp
        except OSError:
            self._seen, self._content = None, None
        return self._content
