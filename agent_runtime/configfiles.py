"""Managed config files in the transaction: staged, verified, backed up, swapped, restored.

The files of a ``ConfigBundle`` (and ``flags.json``) go to the agent's config
directory. Every step is idempotent, so the journal's recovery can redo it:

- ``stage`` writes the bundle under ``staging/<txid>/config/`` (owner-only);
- ``verify`` checks each staged file's sha256 and the bundle's digest;
- ``backup`` copies every file the swap may touch to ``config-backup/`` and
  writes its index (which files existed) last: a backup without an index is
  incomplete and redone;
- ``swap`` replaces each file atomically and removes managed files the new
  bundle no longer has;
- ``restore`` puts the backed-up files back byte for byte and removes those
  that did not exist before (a no-op without a complete backup: the swap
  never started then).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from agent_runtime._fsutil import atomic_write_bytes, fsync_dir, remove_tree
from agent_runtime.errors import ArtifactMismatchError
from states.config_bundle import FLAGS_FILE, ConfigBundle, flags_bytes

__all__ = [
    "BUNDLE_NAME",
    "backup",
    "load_bundle",
    "restore",
    "save_bundle",
    "stage",
    "swap",
    "verify",
]

#: The bundle as received, kept in the transaction's staging directory for recovery.
BUNDLE_NAME = "config.json"
_STAGED = "config"
_BACKUP = "config-backup"
_INDEX = "index.json"


def save_bundle(bundle: ConfigBundle, staging: Path) -> None:
    """Keep ``bundle`` in ``staging`` (owner-only: it may hold secret values)."""
    _place(staging / BUNDLE_NAME, bundle.model_dump_json().encode(), 0o600)


def load_bundle(staging: Path) -> ConfigBundle | None:
    """The bundle kept in ``staging``, or None when the transaction installs no config."""
    path = staging / BUNDLE_NAME
    if not path.is_file():
        return None
    return ConfigBundle.model_validate_json(path.read_bytes())


def _contents(bundle: ConfigBundle) -> list[tuple[str, bytes, int]]:
    files = [(f.path, f.data, f.mode) for f in bundle.files]
    files.append((FLAGS_FILE, flags_bytes(bundle.flags), 0o644))
    return files


def stage(bundle: ConfigBundle, staging: Path) -> int:
    """Write the bundle's files under ``staging``; returns how many."""
    files = _contents(bundle)
    for path, data, _ in files:
        _place(staging / _STAGED / path, data, 0o600)
    return len(files)


def verify(bundle: ConfigBundle, staging: Path) -> None:
    """Raise ArtifactMismatchError unless the staged files are the bundle's, digest included."""
    computed = bundle.computed_digest()
    if computed != bundle.digest:
        raise ArtifactMismatchError(
            f"config digest {computed} does not match the plan's {bundle.digest}"
        )
    for f in bundle.files:
        staged = staging / _STAGED / f.path
        if hashlib.sha256(f.data).hexdigest() != f.sha256:
            raise ArtifactMismatchError(f"config {f.path}: content does not match its sha256")
        try:
            data = staged.read_bytes()
        except FileNotFoundError as e:
            raise ArtifactMismatchError(f"config {f.path}: staged file missing") from e
        if hashlib.sha256(data).hexdigest() != f.sha256:
            raise ArtifactMismatchError(f"config {f.path}: staged file does not match its sha256")
    if (staging / _STAGED / FLAGS_FILE).read_bytes() != flags_bytes(bundle.flags):
        raise ArtifactMismatchError(f"config {FLAGS_FILE}: staged file differs from the flags")


def _touched(bundle: ConfigBundle, managed: Iterable[str]) -> list[str]:
    return sorted({*(p for p, _, _ in _contents(bundle)), *managed})


def backup(bundle: ConfigBundle, config_dir: Path, staging: Path, managed: Iterable[str]) -> int:
    """Copy every file the swap may touch (new and previously managed ones) aside."""
    base = staging / _BACKUP
    remove_tree(base)
    index: dict[str, int | None] = {}
    for path in _touched(bundle, managed):
        live = config_dir / path
        try:
            data = live.read_bytes()
            mode = live.stat().st_mode & 0o777
        except FileNotFoundError:
            index[path] = None
            continue
        _place(base / "files" / path, data, 0o600)
        index[path] = mode
    atomic_write_bytes(base / _INDEX, json.dumps(index, sort_keys=True).encode())
    return sum(1 for m in index.values() if m is not None)


def _place(target: Path, data: bytes, mode: int) -> None:
    """Atomically replace ``target``; the new file has ``mode`` before it becomes visible."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def swap(bundle: ConfigBundle, config_dir: Path, staging: Path, managed: Iterable[str]) -> int:
    """Make the staged files the live ones; remove managed files the bundle dropped."""
    config_dir.mkdir(parents=True, exist_ok=True)
    new = _contents(bundle)
    for path, _, mode in new:
        _place(config_dir / path, (staging / _STAGED / path).read_bytes(), mode)
    keep = {p for p, _, _ in new}
    for path in managed:
        if path not in keep:
            with contextlib.suppress(FileNotFoundError):
                (config_dir / path).unlink()
    fsync_dir(config_dir)
    return len(new)


def restore(config_dir: Path, staging: Path) -> int:
    """Put the backed-up config back byte for byte; returns the files restored (0: no backup)."""
    base = staging / _BACKUP
    try:
        index: dict[str, int | None] = json.loads((base / _INDEX).read_bytes())
    except FileNotFoundError:
        return 0
    restored = 0
    for path, mode in index.items():
        live = config_dir / path
        if mode is None:
            with contextlib.suppress(FileNotFoundError):
                live.unlink()
            continue
        _place(live, (base / "files" / path).read_bytes(), mode)
        restored += 1
    if config_dir.is_dir():
        fsync_dir(config_dir)
    return restored
