"""The installed files' stat cache: a no-op converge trusts unchanged files without hashing."""

from __future__ import annotations

import os

from agent_runtime._fsutil import sha256_file
from agent_runtime.layouts.base import Layout
from agent_runtime.state import CachedFile, DeviceState
from fleetbase.version import Version
from states.manifest import FileEntry

__all__ = ["cache_files", "installed_matches"]


def cache_files(layout: Layout, version: Version, files: list[FileEntry]) -> dict[str, CachedFile]:
    """Stat of each installed file with the manifest's sha256, for the cheap no-op check."""
    cache: dict[str, CachedFile] = {}
    for entry in files:
        try:
            st = os.stat(layout.installed_path(version, entry))
        except OSError:
            continue
        cache[entry.path] = CachedFile(
            size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino, sha256=entry.sha256
        )
    return cache


def installed_matches(
    layout: Layout, version: Version, files: list[FileEntry], state: DeviceState
) -> tuple[bool, bool]:
    """Whether the installed files of ``version`` match ``files``; and whether a hash was needed.

    A file whose size, mtime and inode equal the cached stat (and whose cached
    sha256 is the manifest's) is trusted without hashing; any other is hashed.
    """
    hashed = False
    for entry in files:
        path = layout.installed_path(version, entry)
        try:
            st = os.stat(path)
        except OSError:
            return False, hashed
        cached = state.file_cache.get(entry.path)
        if (
            cached is not None
            and cached.sha256 == entry.sha256
            and cached.size == st.st_size
            and cached.mtime_ns == st.st_mtime_ns
            and cached.inode == st.st_ino
        ):
            continue
        if st.st_size != entry.size:
            return False, hashed
        hashed = True
        if sha256_file(path) != entry.sha256:
            return False, hashed
    return True, hashed
