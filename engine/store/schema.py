"""The store's tables as they are now: what queries use.

Declare every table here, on ``metadata``. Changing a table here is only half of
the change: add a migration to ``engine.store.migrations`` that brings existing
databases to the same shape (tests/store checks that both agree).
"""

from __future__ import annotations

from sqlalchemy import Column, Index, MetaData, String, Table

from engine.store._types import UTCDateTime

__all__ = ["metadata", "reports"]

metadata = MetaData()

#: What each device last said about itself (states.report.Report), one row per device.
reports = Table(
    "reports",
    metadata,
    Column("device", String(200), primary_key=True),
    Column("agent_version", String(100), nullable=True),
    Column("platform", String(16), nullable=True),
    Column("last_seen", UTCDateTime(), nullable=False),
    Column("runtime_version", String(100), nullable=True),
    Column("known_good", String(100), nullable=True),
    Column("last_result", String(200), nullable=True),
    Column("updated_at", UTCDateTime(), nullable=False),
    Index("ix_reports_last_seen", "last_seen"),
)
