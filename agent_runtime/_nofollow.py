"""Changing files inside the agent root without following symbolic links.

An agent may run as a less-privileged user that can write into its own agent
root. A symbolic link it plants there (``core -> /etc``) must not redirect
the runtime's writes, renames or deletes outside the root. On POSIX every
directory below the root is opened with ``O_NOFOLLOW`` and every operation is
done relative to that directory's file descriptor, so a link swapped in
after a check is not followed either. Where directory descriptors are
unavailable (Windows) each component is checked with ``lstat`` instead.

A link found on the way is refused with ``LinkRefusedError`` naming it; the
root itself may be a link (an operator's choice, resolved in the config).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

from agent_runtime.errors import LinkRefusedError

__all__ = ["TMP_MARK", "RootDir", "check_no_links", "tmp_name"]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_BINARY = getattr(os, "O_BINARY", 0)
_CHUNK = 1024 * 1024
#: Whether directory file descriptors can anchor every operation used here.
_DIR_FD = all(
    f in os.supports_dir_fd for f in (os.open, os.mkdir, os.unlink, os.replace, os.stat)
) and bool(_NOFOLLOW and _DIRECTORY)

#: Temporary files the runtime writes beside their destination: ``.<name>.tmp-<pid>``.
TMP_MARK = ".tmp-"


def tmp_name(name: str) -> str:
    """The temporary name this process writes ``name`` under before renaming it in."""
    return f".{name}{TMP_MARK}{os.getpid()}"


def _refuse(root: Path, here: Path) -> LinkRefusedError:
    try:
        dest = f" (to {os.readlink(here)})"
    except OSError:
        dest = ""
    return LinkRefusedError(
        f"{here}: is a symbolic link{dest}; the runtime does not follow links inside "
        f"the agent root {root}: remove it"
    )


def check_no_links(root: Path, rel: str) -> None:
    """Raise LinkRefusedError when an existing component of ``root/rel`` is a symbolic link."""
    here = root
    for part in PurePosixPath(rel).parts:
        here = here / part
        try:
            st = here.lstat()
        except FileNotFoundError:
            return
        if stat.S_ISLNK(st.st_mode):
            raise _refuse(root, here)


class Entry:
    """One name in a directory of the agent root, reached without following links."""

    def __init__(self, root: Path, parent: Path, fd: int | None, name: str) -> None:
        self.root = root
        self.path = parent / name
        self._parent = parent
        self._fd = fd
        self.name = name

    def _at(self, name: str) -> tuple[str | Path, dict[str, int]]:
        if self._fd is None:
            return self._parent / name, {}
        return name, {"dir_fd": self._fd}

    def lstat(self, name: str | None = None) -> os.stat_result | None:
        """The entry's own status (a link is not followed), or None when it does not exist."""
        where, kw = self._at(name or self.name)
        try:
            return os.stat(where, follow_symlinks=False, **kw)
        except FileNotFoundError:
            return None

    def is_file(self) -> bool:
        """True for a regular file; LinkRefusedError for a symbolic link."""
        st = self.lstat()
        if st is not None and stat.S_ISLNK(st.st_mode):
            raise _refuse(self.root, self.path)
        return st is not None and stat.S_ISREG(st.st_mode)

    def open_read(self) -> int:
        """A read-only descriptor of the file; LinkRefusedError when it is a link."""
        where, kw = self._at(self.name)
        if self._fd is None:
            self.is_file()
        try:
            return os.open(where, os.O_RDONLY | _NOFOLLOW | _CLOEXEC | _BINARY, **kw)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise _refuse(self.root, self.path) from e
            raise

    def unlink(self, name: str | None = None) -> None:
        """Remove the entry (a link itself, never its target) if present."""
        where, kw = self._at(name or self.name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(where, **kw)

    def rename(self, new_name: str) -> None:
        """Rename the entry within its directory (over ``new_name`` if present)."""
        src, kw_src = self._at(self.name)
        dst, kw_dst = self._at(new_name)
        os.replace(src, dst, src_dir_fd=kw_src.get("dir_fd"), dst_dir_fd=kw_dst.get("dir_fd"))

    def replace_with(self, src: Path) -> None:
        """Move the file ``src`` (outside the root) onto the entry; across file systems
        (EXDEV) it is copied beside the entry and renamed in, then ``src`` is removed."""
        dst, kw = self._at(self.name)
        try:
            os.replace(src, dst, dst_dir_fd=kw.get("dir_fd"))
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            mode = stat.S_IMODE(os.stat(src).st_mode)
            self.copy_from(src, mode)
            src.unlink()

    def copy_from(
        self, src: Path | int, mode: int, before_rename: Callable[[], None] | None = None
    ) -> None:
        """Write a copy of ``src`` (a path or a readable descriptor, consumed) onto the entry:
        a temporary file beside it, fsynced, chmodded, then renamed over it."""
        tmp = tmp_name(self.name)
        self.unlink(tmp)
        where, kw = self._at(tmp)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC | _BINARY
        fin = src if isinstance(src, int) else os.open(src, os.O_RDONLY | _CLOEXEC | _BINARY)
        try:
            out = os.open(where, flags, 0o600, **kw)
            try:
                while chunk := os.read(fin, _CHUNK):
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(out, view) :]
                if os.name == "posix":
                    os.fchmod(out, mode)
                os.fsync(out)
            finally:
                os.close(out)
            if os.name != "posix":
                os.chmod(where, mode)
            if before_rename is not None:
                before_rename()
            Entry(self.root, self._parent, self._fd, tmp).rename(self.name)
        except BaseException:
            self.unlink(tmp)
            raise
        finally:
            os.close(fin)
        self.sync()

    def temporaries(self) -> list[str]:
        """Names of temporary copies of this entry any process left (``.<name>.tmp-<pid>``)."""
        prefix = f".{self.name}{TMP_MARK}"
        if self._fd is None:
            try:
                names = os.listdir(self._parent)
            except FileNotFoundError:
                return []
        else:
            names = os.listdir(self._fd)
        return [n for n in names if n.startswith(prefix) and n[len(prefix) :].isdigit()]

    def sync(self) -> None:
        """fsync the directory holding the entry (where directories can be fsynced)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.fsync(self._fd)
            return
        from agent_runtime._fsutil import fsync_dir

        fsync_dir(self._parent)


class RootDir:
    """The agent root, entered one directory at a time without following links."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @contextlib.contextmanager
    def entry(self, rel: str, *, create: bool = False) -> Iterator[Entry | None]:
        """The entry ``root/rel``, its parent directories opened without following links
        (made when ``create``); None when a parent directory does not exist.

        Raises LinkRefusedError when a directory on the way is a symbolic link.
        """
        parts = PurePosixPath(rel).parts
        *dirs, name = parts
        here = self.root
        if not _DIR_FD:
            for part in dirs:
                here = here / part
                try:
                    st = here.lstat()
                except FileNotFoundError:
                    if not create:
                        yield None
                        return
                    here.mkdir()
                    continue
                if stat.S_ISLNK(st.st_mode):
                    raise _refuse(self.root, here)
            yield Entry(self.root, here, None, name)
            return
        fd = os.open(self.root, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
        try:
            for part in dirs:
                here = here / part
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, dir_fd=fd)
                try:
                    nfd = os.open(part, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC, dir_fd=fd)
                except FileNotFoundError:
                    yield None
                    return
                except OSError as e:
                    st = os.stat(part, dir_fd=fd, follow_symlinks=False)
                    if stat.S_ISLNK(st.st_mode):
                        raise _refuse(self.root, here) from e
                    raise
                os.close(fd)
                fd = nfd
            yield Entry(self.root, here, fd, name)
        finally:
            os.close(fd)
