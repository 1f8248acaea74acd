"""Server time, and a clock tests can move from outside the process.

``ENGINE_TEST_CLOCK_FILE=PATH`` makes `engine serve` read its time from PATH
(re-read whenever the file changes): a signed number of seconds (``+3600``,
``-30.5``) is an offset added to the real time, which keeps running; an ISO
8601 instant with a zone (``2026-11-28T02:30:00+01:00``) stops the clock at
that instant. A missing or empty file means the real time.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from engine.server.errors import ServerError
from fleetbase.clock import utc_now

__all__ = ["ENV_TEST_CLOCK_FILE", "FileClock", "clock_from_env", "utc_now"]

ENV_TEST_CLOCK_FILE = "ENGINE_TEST_CLOCK_FILE"


def _parse(text: str, path: Path) -> datetime | timedelta | None:
    text = text.strip()
    if not text:
        return None
    if text[0] in "+-":
        try:
            return timedelta(seconds=float(text))
        except ValueError:
            pass
    try:
        instant = datetime.fromisoformat(text)
    except ValueError as e:
        raise ServerError(
            f"{path}: expected seconds of offset (+3600) or an ISO instant with a zone, "
            f"found {text[:60]!r}"
        ) from e
    if instant.tzinfo is None:
        raise ServerError(f"{path}: the instant {text!r} needs a zone, e.g. +00:00")
    return instant.astimezone(UTC)


class FileClock:
    """A clock read from a file (see the module docstring); callable like ``utc_now``."""

    def __init__(self, path: Path) -> None:
        """Read the time from ``path`` on each call (re-parsed only when it changes)."""
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._value: datetime | timedelta | None = None

    def __call__(self) -> datetime:
        """The current time as the file says."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return utc_now()
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            self._value = _parse(self.path.read_text(encoding="utf-8"), self.path)
            self._stamp = stamp
        value = self._value
        if value is None:
            return utc_now()
        if isinstance(value, timedelta):
            return utc_now() + value
        return value


def clock_from_env() -> Callable[[], datetime]:
    """``FileClock($ENGINE_TEST_CLOCK_FILE)`` when that is set, else the real clock."""
    path = os.environ.get(ENV_TEST_CLOCK_FILE, "").strip()
    return FileClock(Path(path)) if path else utc_now
