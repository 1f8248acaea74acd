"""Maintenance windows: a cron start, a duration and a time zone.

A window is open at ``now`` when the latest cron start at or before ``now``
(evaluated in the window's time zone, so "0 2 * * *" in Europe/Berlin is 02:00
local time across daylight-saving changes) plus the duration is after ``now``.
Results are cached per window: the check-in path asks this thousands of
times a second, and the answer only changes at a window's start or end.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from croniter import croniter

from inventory.models import MaintenanceWindow

__all__ = ["current_or_next_window", "in_window", "next_window_start"]

_Key = tuple[str, timedelta, str]
#: window -> (start of the latest window, its end, the next start after it)
_cache: dict[_Key, tuple[datetime, datetime, datetime]] = {}
_lock = threading.Lock()
_MAX_CACHE = 1024


def _key(window: MaintenanceWindow) -> _Key:
    return (window.cron, window.duration, window.timezone)


def _compute(window: MaintenanceWindow, now: datetime) -> tuple[datetime, datetime, datetime]:
    zone = ZoneInfo(window.timezone)
    local = now.astimezone(zone)
    # croniter's get_prev is strictly before its start: start just after now so
    # that a window starting exactly at now counts as open.
    start_local = croniter(window.cron, local + timedelta(seconds=1)).get_prev(datetime)
    following_local = croniter(window.cron, start_local).get_next(datetime)
    # The duration is elapsed time: add it in UTC, not on the local wall clock.
    start = start_local.astimezone(UTC)
    return start, start + window.duration, following_local.astimezone(UTC)


def _interval(window: MaintenanceWindow, now: datetime) -> tuple[datetime, datetime, datetime]:
    key = _key(window)
    found = _cache.get(key)
    if found is not None and found[0] <= now < found[2]:
        return found
    computed = _compute(window, now)
    with _lock:
        if len(_cache) >= _MAX_CACHE:
            _cache.clear()
        _cache[key] = computed
    return computed


def in_window(window: MaintenanceWindow | None, now: datetime) -> bool:
    """True when devices under ``window`` may be touched at ``now`` (always, without one).

    ``now`` must be timezone-aware.
    """
    if window is None:
        return True
    start, end, _ = _interval(window, now)
    return start <= now < end


def next_window_start(window: MaintenanceWindow | None, now: datetime) -> datetime | None:
    """The first window start strictly after ``now`` (in UTC); None without a window."""
    if window is None:
        return None
    _, _, following = _interval(window, now)
    return following


def current_or_next_window(
    window: MaintenanceWindow | None, now: datetime
) -> tuple[datetime, datetime] | None:
    """(start, end) of the window open at ``now``, else of the next one; None without a window."""
    if window is None:
        return None
    start, end, following = _interval(window, now)
    if start <= now < end:
        return start, end
    return following, following + window.duration
