"""Crash-safe file operations: atomic writes, durable renames, hashing."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
from pathlib import Path

__all__ = [
    "atomic_write_bytes",
    "copy_durable",
    "file_system_note",
    "fsync_dir",
    "move_durable",
    "remove_temporaries",
    "remove_tree",
    "sha256_file",
]

_CHUNK = 1024 * 1024


def fsync_dir(directory: Path) -> None:
    """Flush a directory entry table to disk (no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # Windows cannot open directories; renames there are journaled by NTFS
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves either the old or the new content.

    Writes a temporary file beside it, fsyncs it, renames it over ``path`` and
    fsyncs the directory. Raises OSError (e.g. ENOSPC, EFBIG); the temporary
    file is removed then.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's content."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def copy_durable(src: Path, dest: Path, mode: int | None = None) -> None:
    """Copy ``src`` to ``dest`` atomically (temp file + fsync + rename), optionally chmod."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, _CHUNK)
            fout.flush()
            os.fsync(fout.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(dest.parent)


def move_durable(src: Path, dest: Path) -> None:
    """Rename ``src`` over ``dest`` (copying when they are on different file systems)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(src, dest)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        copy_durable(src, dest)
        src.unlink()
    fsync_dir(dest.parent)


def _device_of(path: Path) -> int | None:
    """st_dev of ``path`` or of its nearest existing ancestor."""
    for p in (path, *path.parents):
        try:
            return p.stat().st_dev
        except OSError:
            continue
    return None


def file_system_note(staging: Path, agent_root: Path) -> str | None:
    """A note for the log when ``staging`` and ``agent_root`` are on different file systems
    (a rename between them fails with EXDEV, so swaps copy instead); None when they share one."""
    a, b = _device_of(staging), _device_of(agent_root)
    if a is None or b is None or a == b:
        return None
    return (
        f"note: the staging directory {staging} and the agent root {agent_root} are on "
        "different file systems: each swapped file is copied beside its target and renamed "
        "in (still atomic per file, but slower than a rename); put state_dir on the agent "
        "root's file system to avoid the copy"
    )


def remove_temporaries(directory: Path) -> list[str]:
    """Remove the temporary files (``.<name>.tmp-<pid>``) other processes left in
    ``directory`` (a killed run's atomic writes); the names removed."""
    own = f".tmp-{os.getpid()}"
    removed = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    for e in entries:
        head, mark, pid = e.name.rpartition(".tmp-")
        if head.startswith(".") and mark and pid.isdigit() and not e.name.endswith(own):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(e.path)
            removed.append(e.name)
    return removed


def remove_tree(path: Path) -> None:
    """Remove a file or directory tree if present."""
    if path.is_symlink() or path.is_file():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)
