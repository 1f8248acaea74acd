"""Releases from an agent build: `engine release new` and `engine release list`.

``new_release`` copies a build directory into ``artifacts/VERSION/``, computes
each file's sha256, size and mode, takes the next serial, and writes
``releases/VERSION.yaml`` (with comments), signing it when a key is configured.
The operator never computes a hash by hand.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import yaml

from engine.errors import EngineError
from engine.release_key import signing_key_path
from engine.signing import add_signatures, key_id, load_private_key
from fleetbase.duration import format_duration
from fleetbase.platform import Platform
from fleetbase.version import Version
from inventory.catalog import RELEASES_DIR, LoadedRelease, load_release, load_release_catalog
from inventory.errors import InventoryError
from inventory.loader import OperatorRepo
from states.manifest import HealthCheck, HealthCheckKind
from states.signing import SIGNATURE_SUFFIX, SignatureError

__all__ = [
    "ARTIFACTS_DIR",
    "NewRelease",
    "ReleaseError",
    "ReleaseRow",
    "list_releases",
    "new_release",
    "parse_health",
]

ARTIFACTS_DIR = "artifacts"
#: Build leftovers not copied into a release.
_SKIPPED_DIRS = frozenset({"__pycache__", ".git", ".hg", ".svn"})
_SKIPPED_SUFFIXES = (".pyc", ".pyo")


class ReleaseError(EngineError):
    """A release cannot be made: the version exists, the build is unusable, the key is bad."""


@dataclass(frozen=True)
class BuildFile:
    """One file of the build: its path in the release, digest, size and mode."""

    path: str  # POSIX, relative to the build directory
    sha256: str
    size: int
    mode: int


@dataclass(frozen=True)
class NewRelease:
    """What `engine release new` wrote."""

    version: Version
    serial: int
    manifest: Path
    artifacts: Path
    files: int
    size: int
    platforms: tuple[Platform, ...]
    rollback_to: tuple[Version, ...]
    signature: Path | None  # None when no signing key is configured
    key_ids: tuple[str, ...] = ()


def parse_health(text: str, timeout: timedelta | None = None) -> HealthCheck:
    """``KIND[:ARG]`` as a health check: ``heartbeat_file:PATH``, ``http:URL``, or a kind
    without argument (``process``, ``server``, ``nats``).

    Raises ReleaseError naming the kinds when ``text`` is none of them.
    """
    kind_text, _, arg = text.partition(":")
    kinds = ", ".join(f"{k.value}" for k in HealthCheckKind)
    try:
        kind = HealthCheckKind(kind_text)
    except ValueError as e:
        raise ReleaseError(
            f"--health {text}: unknown kind {kind_text!r}; expected one of {kinds} "
            "(heartbeat_file:PATH, http:URL)"
        ) from e
    values: dict[str, object] = {"kind": kind}
    if kind is HealthCheckKind.HEARTBEAT_FILE:
        values["path"] = arg
    elif kind is HealthCheckKind.HTTP:
        values["url"] = arg
    elif arg:
        raise ReleaseError(f"--health {text}: {kind.value} takes no argument")
    if timeout is not None:
        values["timeout"] = timeout
    try:
        return HealthCheck.model_validate(values)
    except ValueError as e:
        raise ReleaseError(f"--health {text}: {e}") from e


def _scan(build: Path, progress: Callable[[int], None] | None) -> list[BuildFile]:
    """Every regular file under ``build`` with its digest, in path order; refuses links."""
    found: list[BuildFile] = []
    for top, dirs, names in os.walk(build):
        dirs[:] = sorted(d for d in dirs if d not in _SKIPPED_DIRS)
        for name in sorted(names):
            path = Path(top) / name
            rel = path.relative_to(build).as_posix()
            if name.endswith(_SKIPPED_SUFFIXES):
                continue
            if path.is_symlink() or not path.is_file():
                raise ReleaseError(
                    f"{path}: not a regular file (links and special files cannot be released)"
                )
            digest = hashlib.sha256()
            size = 0
            with path.open("rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
                    size += len(chunk)
            executable = path.stat().st_mode & 0o111
            found.append(BuildFile(rel, digest.hexdigest(), size, 0o755 if executable else 0o644))
            if progress is not None:
                progress(len(found))
    for d in [Path(top) for top, _, _ in os.walk(build)]:
        if d.is_symlink():
            raise ReleaseError(f"{d}: a directory link cannot be released")
    if not found:
        raise ReleaseError(f"{build}: no files to release")
    return sorted(found, key=lambda f: f.path)


def _previous(releases: dict[Version, LoadedRelease], version: Version) -> LoadedRelease | None:
    older = [v for v in releases if v < version]
    return releases[max(older)] if older else None


def _manifest_text(
    *,
    version: Version,
    serial: int,
    expires: datetime,
    files: Sequence[BuildFile],
    platforms: Sequence[Platform],
    commands: dict[Platform, list[str] | None],
    health: HealthCheck | None,
    rollback_to: Sequence[Version],
    notes: str | None,
    build: Path,
    now: datetime,
) -> str:
    entries = [
        {
            "path": f.path,
            "sha256": f.sha256,
            "size": f.size,
            "mode": f"{f.mode:04o}",
            "source": f"{version}/{f.path}",
        }
        for f in files
    ]
    head = [
        f"# Release {version}, written by `engine release new` on "
        f"{now.strftime('%Y-%m-%dT%H:%M:%SZ')} from {build}.",
        "# sha256, size and mode were computed from the files, which were copied to",
        f"# {ARTIFACTS_DIR}/{version}/. Edit what you like, then sign again:",
        f"#   engine release sign {RELEASES_DIR}/{version}.yaml",
        "kind: release",
        f'version: "{version}"',
        "# devices refuse a release whose serial is below one they have seen",
        f"serial: {serial}",
        "# devices refuse the manifest after this instant (a frozen mirror cannot hold them back)",
        f"expires: '{expires.strftime('%Y-%m-%dT%H:%M:%SZ')}'",
    ]
    if notes:
        head.append(yaml.safe_dump({"notes": notes}, sort_keys=False).rstrip())
    if health is not None:
        data = health.model_dump(mode="json", exclude_defaults=True)
        data["kind"] = health.kind.value
        data["timeout"] = format_duration(health.timeout)
        head.append("# how the runtime proves the new version alive after the restart")
        head.append(yaml.safe_dump({"health_check": data}, sort_keys=False).rstrip())
    head.append("# releases devices may be sent back to from this one (a halt, a rollback)")
    head.append(f"rollback_to: {json.dumps([str(v) for v in rollback_to])}")
    body: dict[str, object] = {}
    for p in platforms:
        section: dict[str, object] = {}
        command = commands.get(p)
        if command:
            section["command"] = command
        section["files"] = [dict(e) for e in entries]  # copies: no YAML anchors and aliases
        body[p.value] = section
    head.append("# the files of each platform; source is under artifacts/")
    dumped = yaml.safe_dump({"platforms": body}, sort_keys=False, width=120)
    return "\n".join(head) + "\n" + dumped


def new_release(
    root: Path,
    version: Version,
    build: Path,
    *,
    now: datetime,
    platforms: Sequence[Platform] = (),
    health: HealthCheck | None = None,
    command: list[str] | None = None,
    expires_in: timedelta = timedelta(days=365),
    rollback_to: Sequence[Version] | None = None,
    notes: str | None = None,
    key: Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> NewRelease:
    """Copy ``build`` into artifacts/VERSION/ and write releases/VERSION.yaml for it.

    Platforms default to every platform; the serial is one above the highest
    in releases/; the health check, the command (per platform) and rollback_to
    default to those of the newest earlier release (rollback_to: that
    release). The manifest is validated before it is put in place and signed
    when a key is given or configured (``--key``, $ENGINE_SIGNING_KEY,
    engine.yaml's signing_key). Raises ReleaseError, leaving nothing behind.
    """
    build = build.resolve()
    if not build.is_dir():
        raise ReleaseError(f"--from {build}: not a directory")
    manifest_path = root / RELEASES_DIR / f"{version}.yaml"
    artifacts = root / ARTIFACTS_DIR / str(version)
    for existing in (manifest_path, artifacts):
        if existing.exists():
            raise ReleaseError(f"{existing} already exists: release {version} was made before")
    catalog = load_release_catalog(root)
    if catalog.problems:
        raise ReleaseError(
            "releases/ has problems; fix them first so the new serial is right:\n"
            + InventoryError(catalog.problems).render()
        )
    try:
        key_path = signing_key_path(root, key)
        signer = load_private_key(key_path) if key_path is not None else None
    except (InventoryError, SignatureError, OSError) as e:
        raise ReleaseError(f"cannot load the signing key: {e}") from e
    files = _scan(build, progress)
    previous = _previous(catalog.releases, version)
    chosen = tuple(sorted(set(platforms) or set(Platform), key=lambda p: p.value))
    commands: dict[Platform, list[str] | None] = {}
    for p in chosen:
        if command is not None:
            commands[p] = command
        elif previous is not None and p in previous.manifest.platforms:
            commands[p] = previous.manifest.platforms[p].command
    if health is None and previous is not None:
        health = previous.manifest.health_check
    if rollback_to is None:
        rollback_to = [previous.manifest.version] if previous is not None else []
    serial = max((r.manifest.serial for r in catalog.releases.values()), default=0) + 1
    text = _manifest_text(
        version=version, serial=serial, expires=now + expires_in, files=files,
        platforms=chosen, commands=commands, health=health, rollback_to=rollback_to,
        notes=notes, build=build, now=now,
    )  # fmt: skip
    manifest_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{version}.", suffix=".yaml", dir=manifest_path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        shutil.copytree(
            build, artifacts, ignore=shutil.ignore_patterns(*_SKIPPED_DIRS, "*.pyc", "*.pyo")
        )
        os.replace(tmp, manifest_path)  # validated under its own name: it must match the version
        try:
            load_release(manifest_path, root)
        except InventoryError as e:
            manifest_path.unlink(missing_ok=True)
            raise ReleaseError(f"the build does not make a valid release:\n{e.render()}") from e
        signature = None
        kids: tuple[str, ...] = ()
        if signer is not None:
            signature = manifest_path.with_name(manifest_path.name + SIGNATURE_SUFFIX)
            signature.write_bytes(add_signatures(manifest_path.read_bytes(), None, [signer]))
            kids = (key_id(signer.public_key()),)
    except BaseException:
        tmp.unlink(missing_ok=True)
        if not manifest_path.exists():
            shutil.rmtree(artifacts, ignore_errors=True)
        raise
    return NewRelease(
        version=version,
        serial=serial,
        manifest=manifest_path,
        artifacts=artifacts,
        files=len(files),
        size=sum(f.size for f in files),
        platforms=chosen,
        rollback_to=tuple(rollback_to),
        signature=signature,
        key_ids=kids,
    )


@dataclass(frozen=True)
class ReleaseRow:
    """One release as `engine release list` shows it."""

    version: str
    serial: int
    expires: datetime
    platforms: list[str]
    files: int
    signatures: int  # entries in releases/VERSION.yaml.sig (0: unsigned)
    #: groups whose agent.release it is (a channel's groups: what their channel resolved to)
    groups: list[str] = field(default_factory=list)
    pinned: int = 0  # devices pinned to it
    channel: str | None = None  # its channel in channels.yaml


def _signature_count(loaded: LoadedRelease) -> int:
    if loaded.signature_path is None:
        return 0
    try:
        doc = json.loads(loaded.signature_path.read_bytes())
    except (OSError, ValueError):
        return 0
    entries = doc.get("signatures") if isinstance(doc, dict) else None
    return len(entries) if isinstance(entries, list) else 0


def list_releases(repo: OperatorRepo) -> list[ReleaseRow]:
    """Every release of ``repo``, newest first, with its signatures and the groups using it."""
    rows: list[ReleaseRow] = []
    for version in sorted(repo.releases, reverse=True):
        loaded = repo.releases[version]
        manifest = loaded.manifest
        groups = sorted(
            name
            for name, g in repo.inventory.groups.items()
            if g.agent is not None and g.agent.release == version
        )
        pinned = sum(1 for d in repo.inventory.devices.values() if d.pin == version)
        rows.append(
            ReleaseRow(
                version=str(version),
                serial=manifest.serial,
                expires=manifest.expires,
                platforms=sorted(p.value for p in manifest.platforms),
                files=max(len(p.files) for p in manifest.platforms.values()),
                signatures=_signature_count(loaded),
                groups=groups,
                pinned=pinned,
                channel=repo.channels.channel_of(version),
            )
        )
    return rows
