"""Fetching manifests and artifacts: http(s) with Range resume, or local paths.

Every transfer is capped at the size the signed manifest declares, ends
when no byte arrives for ``stall_timeout``, and ends when its average speed
is below ``min_speed`` once ``min_speed_grace`` has passed (a server dripping
a byte at a time cannot keep it alive: ``SlowRetrievalError``). Manifests and
signatures must arrive whole within ``manifest_timeout``. Transport problems raise
``DownloadError`` (with the HTTP status when there was one); content that
does not match the manifest raises ``ArtifactMismatchError`` and its partial
file is removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING

from agent_runtime import faults
from agent_runtime._fsutil import fsync_dir
from agent_runtime.config import DownloadSettings
from agent_runtime.errors import (
    ArtifactMismatchError,
    DownloadError,
    SlowRetrievalError,
    TransportError,
)

if TYPE_CHECKING:  # the HTTP client (http.client, ssl) is imported on first use
    from agent_runtime._http import HttpClient

__all__ = ["Fetcher", "Progress", "is_url"]

_CHUNK = 256 * 1024

#: Called with (bytes of this file done, bytes of this file in total).
Progress = Callable[[int, int], None]


def is_url(location: str) -> bool:
    """True for http:// and https:// locations."""
    return location.startswith(("http://", "https://"))


class _Pace:
    """The average speed of one transfer, checked against the configured minimum."""

    def __init__(
        self, location: str, settings: DownloadSettings, limit: float | None = None
    ) -> None:
        self.location = location
        self.min_speed = settings.min_speed
        self.grace = settings.min_speed_grace.total_seconds()
        self.limit = limit
        self.started = time.monotonic()
        self.received = 0

    def add(self, n: int) -> None:
        """Count ``n`` bytes received; SlowRetrievalError when the transfer is too slow."""
        self.received += n
        elapsed = time.monotonic() - self.started
        if self.limit is not None and elapsed > self.limit:
            raise SlowRetrievalError(
                f"{self.location}: slow retrieval: not complete after {elapsed:.1f}s "
                f"({self.received} bytes; download.manifest_timeout is {self.limit:g}s)"
            )
        if self.min_speed and elapsed > self.grace and self.received < self.min_speed * elapsed:
            raise SlowRetrievalError(
                f"{self.location}: slow retrieval: {self.received} bytes in {elapsed:.1f}s, "
                f"below the minimum average of {self.min_speed} bytes/s (download.min_speed)"
            )


class _RestartError(Exception):
    """The server ignored the Range: start the file again from byte 0."""


class Fetcher:
    """Downloads into staging; one instance per runtime (it keeps an HTTP connection)."""

    def __init__(self, settings: DownloadSettings, client: HttpClient | None = None) -> None:
        self.settings = settings
        self._client = client
        self.headers: dict[str, str] = {}
        self.bytes_transferred = 0

    @property
    def client(self) -> HttpClient:
        """The HTTP client (connect timeout, stall timeout as read timeout), made on first use."""
        if self._client is None:
            from agent_runtime._http import HttpClient

            self._client = HttpClient(
                connect_timeout=self.settings.connect_timeout.total_seconds(),
                read_timeout=self.settings.stall_timeout.total_seconds(),
            )
        return self._client

    def close(self) -> None:
        """Close the kept-alive connection (the next download opens a new one)."""
        if self._client is not None:
            self._client.close()

    def read_small(self, location: str, limit: int) -> bytes:
        """The whole content of a small document (manifest, signature), at most ``limit`` bytes.

        Raises DownloadError when it cannot be read, ArtifactMismatchError when too large.
        """
        if not is_url(location):
            try:
                with open(location, "rb") as f:
                    data = f.read(limit + 1)
            except OSError as e:
                raise DownloadError(f"{location}: cannot read: {e.strerror or e}") from e
        else:
            pace = _Pace(location, self.settings, self.settings.manifest_timeout.total_seconds())
            try:
                with self.client.request("GET", location, headers=self.headers) as resp:
                    if resp.status != 200:
                        raise DownloadError(f"{location}: HTTP {resp.status}", status=resp.status)
                    parts: list[bytes] = []
                    received = 0
                    while received <= limit:
                        chunk = resp.read(min(64 * 1024, limit + 1 - received))
                        if not chunk:
                            break
                        parts.append(chunk)
                        received += len(chunk)
                        pace.add(len(chunk))
                    data = b"".join(parts)
            except TransportError as e:
                raise DownloadError(f"{location}: {_describe(e)}") from e
        if len(data) > limit:
            raise ArtifactMismatchError(f"{location}: larger than the limit of {limit} bytes")
        return data

    def fetch(
        self,
        location: str,
        dest: Path,
        *,
        size: int,
        sha256: str,
        progress: Progress | None = None,
    ) -> None:
        """Make ``dest`` hold exactly ``size`` bytes hashing to ``sha256`` from ``location``.

        A partial ``dest.part`` left by an earlier attempt is resumed. Raises
        DownloadError (transport; the partial file is kept for resuming) or
        ArtifactMismatchError (content; the partial file is removed).
        """
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")
        if dest.exists():
            if dest.stat().st_size == size and _hash_of(dest) == sha256:
                return
            dest.unlink()
        attempts = self.settings.retries + 1
        for attempt in range(attempts):
            try:
                if is_url(location):
                    self._fetch_http(location, part, size, progress)
                else:
                    self._fetch_local(location, part, size, progress)
                break
            except _RestartError:
                with contextlib.suppress(FileNotFoundError):
                    part.unlink()
                if attempt == attempts - 1:
                    raise DownloadError(f"{location}: server keeps ignoring Range") from None
            except DownloadError:
                if attempt == attempts - 1 or not is_url(location):
                    raise
        actual_size = part.stat().st_size
        if actual_size != size:
            part.unlink()
            raise ArtifactMismatchError(
                f"{location}: got {actual_size} bytes, the manifest declares {size}"
            )
        actual = _hash_of(part)
        if actual != sha256:
            part.unlink()
            raise ArtifactMismatchError(
                f"{location}: sha256 {actual} does not match the manifest's {sha256}"
            )
        os.replace(part, dest)
        fsync_dir(dest.parent)

    def _fetch_local(self, location: str, part: Path, size: int, progress: Progress | None) -> None:
        try:
            src = open(location, "rb")  # noqa: SIM115 - closed below, errors mapped
        except OSError as e:
            raise DownloadError(f"{location}: cannot read: {e.strerror or e}") from e
        with src, open(part, "wb") as out:
            self._copy(
                src.read, out, span=(0, size), location=location, part=part, progress=progress
            )

    def _fetch_http(self, location: str, part: Path, size: int, progress: Progress | None) -> None:
        offset = part.stat().st_size if part.exists() else 0
        if offset > size:
            part.unlink()
            offset = 0
        headers = dict(self.headers)
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            resp = self.client.request("GET", location, headers=headers)
        except TransportError as e:
            raise DownloadError(f"{location}: {_describe(e)}") from e
        with resp:
            if resp.status == 416 and offset:
                if offset == size:
                    return  # complete already; the hash check decides
                raise _RestartError
            if resp.status == 206 and offset:
                if not (resp.headers.get("Content-Range") or "").startswith(f"bytes {offset}-"):
                    raise _RestartError
            elif resp.status == 200:
                offset = 0
            else:
                raise DownloadError(
                    f"{location}: HTTP {resp.status} {resp.reason or ''}".rstrip(),
                    status=resp.status,
                )
            declared = resp.headers.get("Content-Length")
            if (
                declared is not None
                and declared.isascii()
                and declared.isdigit()
                and offset + int(declared) > size
            ):
                with contextlib.suppress(FileNotFoundError):
                    part.unlink()
                raise ArtifactMismatchError(
                    f"{location}: server announces {offset + int(declared)} bytes, "
                    f"the manifest declares {size}"
                )
            mode = "ab" if offset else "wb"
            with open(part, mode) as out:

                def read(n: int) -> bytes:
                    try:
                        return resp.read(n)
                    except TransportError as e:
                        raise DownloadError(f"{location}: {_describe(e)}") from e

                self._copy(
                    read,
                    out,
                    span=(offset, size),
                    location=location,
                    part=part,
                    progress=progress,
                    pace=_Pace(location, self.settings),
                )

    def _copy(
        self,
        read: Callable[[int], bytes],
        out: IO[bytes],
        *,
        span: tuple[int, int],
        location: str,
        part: Path,
        progress: Progress | None,
        pace: _Pace | None = None,
    ) -> None:
        done, size = span
        n = 0
        while chunk := read(_CHUNK):
            if done + len(chunk) > size:
                out.close()
                part.unlink()
                raise ArtifactMismatchError(
                    f"{location}: more data than the {size} bytes the manifest declares"
                )
            out.write(chunk)
            done += len(chunk)
            self.bytes_transferred += len(chunk)
            n += 1
            if pace is not None:
                pace.add(len(chunk))
            if progress is not None:
                progress(done, size)
            faults.hit(f"download.chunk:{n}")
        out.flush()
        os.fsync(out.fileno())


def _hash_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            h.update(chunk)
    return h.hexdigest()


def _describe(e: TransportError) -> str:
    if not e.connected:
        return str(e) if e.timed_out else f"cannot connect: {e}"
    if e.timed_out:
        return "transfer stalled (no data within the stall timeout)"
    return str(e)
