"""Column types that behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, String
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

__all__ = ["UTCDateTime", "format_utc"]


def format_utc(value: datetime) -> str:
    """Fixed-width ISO 8601 text in UTC, so that text order is time order."""
    return value.astimezone(UTC).isoformat(timespec="microseconds")


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware instant, stored in UTC, read back as an aware UTC datetime.

    PostgreSQL keeps it as ``timestamptz`` (sessions run with ``timezone=UTC``);
    SQLite keeps fixed-width ISO text such as ``2026-11-27T10:00:00.000000+00:00``,
    which sorts chronologically and parses with the fast ``datetime.fromisoformat``.
    Naive datetimes are refused: a time without a zone is ambiguous.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        """Text on SQLite, timestamptz elsewhere."""
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(32))
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        """Convert to UTC (text on SQLite); refuse naive values."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()} has no time zone")
        if dialect.name == "sqlite":
            return format_utc(value)
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        """An aware UTC datetime."""
        if value is None:
            return None
        if isinstance(value, str):
            return datetime.fromisoformat(value)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)  # type: ignore[no-any-return]
        if value.tzinfo is not UTC:
            return value.astimezone(UTC)  # type: ignore[no-any-return]
        return value  # type: ignore[no-any-return]
