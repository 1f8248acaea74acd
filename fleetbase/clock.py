"""Wall-clock time as every layer reads it: timezone-aware UTC."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["utc_now"]


def utc_now() -> datetime:
    """The current time, in UTC."""
    return datetime.now(UTC)
