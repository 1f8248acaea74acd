"""The store's tables as they are now: what queries use.

Declare every table here, on ``metadata``. Changing a table here is only half of
the change: add a migration to ``engine.store.migrations`` that brings existing
databases to the same shape (tests/store checks that both agree).
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, Index, Integer, MetaData, String, Table

from engine.store._types import UTCDateTime

__all__ = ["devices", "events", "heartbeats", "metadata", "reports"]

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
    # The last transaction as the device reported it at check-in (migration 2);
    # ``last_result`` above is its result.
    Column("tx_target", String(100), nullable=True),
    Column("tx_phase", String(50), nullable=True),
    Column("tx_attempts", Integer, nullable=True),
    Column("tx_detail", String(2000), nullable=True),
    Column("agent_running", Boolean, nullable=True),
    Index("ix_reports_last_seen", "last_seen"),
)

#: Enrolled devices and the sha256 of their token (engine serve; migration 2).
#: ``revoked_at`` set means the token no longer works and re-enrollment with the
#: fleet secret is refused until an operator enrolls the device again.
devices = Table(
    "devices",
    metadata,
    Column("device", String(200), primary_key=True),
    Column("platform", String(16), nullable=False),
    Column("token_hash", String(64), nullable=False),
    Column("enrolled_at", UTCDateTime(), nullable=False),
    Column("revoked_at", UTCDateTime(), nullable=True),
    Column("runtime_version", String(100), nullable=True),
    Column("enrollments", Integer, nullable=False),
)

#: The latest agent heartbeat each device forwarded (states.protocol.Heartbeat).
heartbeats = Table(
    "heartbeats",
    metadata,
    Column("device", String(200), primary_key=True),
    Column("version", String(100), nullable=False),
    Column("at", UTCDateTime(), nullable=False),
    Column("pid", Integer, nullable=True),
    Column("received_at", UTCDateTime(), nullable=False),
)

#: Step events devices posted (states.protocol.StepEvent), in arrival order.
events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("device", String(200), nullable=False),
    Column("target", String(100), nullable=False),
    Column("step", String(50), nullable=False),
    Column("status", String(50), nullable=False),
    Column("detail", String(2000), nullable=True),
    Column("at", UTCDateTime(), nullable=False),
    Column("received_at", UTCDateTime(), nullable=False),
    Index("ix_events_device_id", "device", "id"),
)
