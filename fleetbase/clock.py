"""Wall-clock time as every layer reads it: timezone-aware UTC."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["utc_now", "utc_text"]


def utc_now() -> datetime:
    """The current time, in UTC."""
    return datetime.now(UTC)


def utc_text(when: datetime) -> str:
    """``when`` in UTC to the second, as manifests write instants: ``2026-11-30T00:00:00Z``."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
