"""Runtime releases: signed runtime bundles kept per version, what groups' ``runtime:`` names.

A runtime release is ``runtime-releases/<version>/<target>/`` in the operator
repo: one runtime bundle per device target (``bundle.json`` signed by the
release key, and the wheels it lists), all of the same runtime version.
``new_runtime_release`` makes one from the bundles `engine runtime bundle`
wrote; ``list_runtime_releases`` is what the planner and `engine serve` read.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from engine.errors import EngineError
from fleetbase.version import Version
from inventory.runtime_catalog import (
    RUNTIME_RELEASES_DIR,
    RuntimeRelease,
    list_runtime_releases,
    runtime_releases_dir,
)
from states.bundle import TARGET_RE, BundleError, verify_bundle
from states.signing import SignatureError, raw_trusted_keys

__all__ = [
    "RUNTIME_RELEASES_DIR",
    "RuntimeRelease",
    "RuntimeReleaseError",
    "list_runtime_releases",
    "new_runtime_release",
    "runtime_releases_dir",
]


class RuntimeReleaseError(EngineError):
    """A runtime release cannot be made: the version exists, a bundle is refused."""


def new_runtime_release(
    root: Path, bundles: Path, trusted_keys: list[str], version: Version | None = None
) -> RuntimeRelease:
    """Copy every bundle under ``bundles`` into ``runtime-releases/<version>/``.

    Each bundle must verify against ``trusted_keys`` (signed by the release key)
    and all must carry the same runtime version (``version`` when given). The
    release is assembled beside its place and renamed in; an existing version is
    refused (a release never changes once made). Raises RuntimeReleaseError.
    """
    if not trusted_keys:
        raise RuntimeReleaseError(
            "no trusted keys to check the bundles' signatures with (engine.yaml trusted_keys: "
            "public key files)"
        )
    try:
        keys = raw_trusted_keys(trusted_keys)
    except SignatureError as e:
        raise RuntimeReleaseError(f"engine.yaml trusted_keys: {e}") from e
    targets = sorted(
        p for p in bundles.iterdir() if p.is_dir() and TARGET_RE.match(p.name)
    ) if bundles.is_dir() else []  # fmt: skip
    if not targets:
        raise RuntimeReleaseError(
            f"{bundles}: no runtime bundles (build them with `engine runtime bundle`)"
        )
    versions: set[str] = set()
    for bundle in targets:
        try:
            manifest = verify_bundle(bundle, keys)
        except (BundleError, SignatureError) as e:
            raise RuntimeReleaseError(f"runtime bundle refused: {e}") from e
        versions.add(manifest.runtime_version)
    if len(versions) != 1:
        raise RuntimeReleaseError(
            f"{bundles}: the bundles carry different runtime versions {sorted(versions)}"
        )
    found = Version(versions.pop())
    if version is not None and found != version:
        raise RuntimeReleaseError(f"{bundles}: the bundles are runtime {found}, not {version}")
    base = runtime_releases_dir(root)
    final = base / str(found)
    if final.exists():
        raise RuntimeReleaseError(f"runtime release {found} exists already ({final})")
    base.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{found}.", dir=base))
    try:
        for bundle in targets:
            shutil.copytree(bundle, staging / bundle.name)
            verify_bundle(staging / bundle.name, keys)  # the copy, as devices will get it
        staging.chmod(0o755)
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return RuntimeRelease(found, final, tuple(t.name for t in targets))
