"""The store's tables as they are now: what queries use.

Declare every table here, on ``metadata``. Changing a table here is only half of
the change: add a migration to ``engine.store.migrations`` that brings existing
databases to the same shape (tests/store checks that both agree).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from engine.store._types import UTCDateTime

__all__ = [
    "controller_lease",
    "devices",
    "enrollment_requests",
    "events",
    "heartbeats",
    "invites",
    "metadata",
    "performance",
    "releases",
    "reports",
    "rollout_devices",
    "rollouts",
    "webhook_deliveries",
]

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
    # How the runtime took over the agent it found (migration 8): known | unknown | empty,
    # the release matched, and what it said (e.g. where unknown files were backed up).
    Column("adoption", String(20), nullable=True),
    Column("adopted_version", String(100), nullable=True),
    Column("adoption_detail", String(2000), nullable=True),
    # What releases' requires: is checked against (migration 15): the runtime's Python,
    # the OS version, and other components as JSON {name: version}.
    Column("python_version", String(100), nullable=True),
    Column("os_version", String(100), nullable=True),
    Column("components", Text, nullable=True),
    # The runtime's last self-update as the device reported it (migration 14): the
    # runtime release it tried, confirmed | reverted | failed, and what happened.
    Column("runtime_target", String(100), nullable=True),
    Column("runtime_result", String(20), nullable=True),
    Column("runtime_detail", String(2000), nullable=True),
    # The digest of the config files and flags the device runs (migration 13).
    Column("config_digest", String(80), nullable=True),
    # What the device's runtime says it can do (migration 16): a JSON list, sorted,
    # e.g. ["config", "runtime_update"]; NULL when never said.
    Column("features", Text, nullable=True),
    Index("ix_reports_last_seen", "last_seen"),
    # /metrics counts devices per version and online state from this index alone.
    Index("ix_reports_version_seen", "agent_version", "last_seen"),
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
    # Migration 7: the sha256 of the key the device proved when it enrolled (lets it
    # enroll again without approval), and of the token its last re-enrollment replaced
    # (so the holder of that token is told why it stopped working).
    Column("key_hash", String(64), nullable=True),
    Column("replaced_hash", String(64), nullable=True),
    Column("replaced_at", UTCDateTime(), nullable=True),
    Column("replaced_how", String(100), nullable=True),
)

#: Enrollments of an already-enrolled device that await an operator (migration 7), one per
#: device key (Mender's authentication sets): pending, approved or rejected.
enrollment_requests = Table(
    "enrollment_requests",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("device", String(200), nullable=False),
    Column("key_hash", String(64), nullable=False),
    Column("platform", String(16), nullable=False),
    Column("runtime_version", String(100), nullable=True),
    Column("source", String(100), nullable=True),
    Column("requested_at", UTCDateTime(), nullable=False),
    Column("last_seen_at", UTCDateTime(), nullable=False),
    Column("status", String(16), nullable=False),
    Column("decided_at", UTCDateTime(), nullable=True),
    Column("decided_by", String(100), nullable=True),
    UniqueConstraint("device", "key_hash", name="uq_enrollment_requests_device_key"),
)

#: The single-use enrollment code an operator issued for a device (migration 5): only its
#: sha256 is kept; ``used_at`` set means it was redeemed and works no more.
invites = Table(
    "invites",
    metadata,
    Column("device", String(200), primary_key=True),
    Column("code_hash", String(64), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
    Column("used_at", UTCDateTime(), nullable=True),
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
    Index("ix_events_received_at", "received_at"),
)

#: Signed release manifests recorded by `engine apply`, served to devices by any replica.
releases = Table(
    "releases",
    metadata,
    Column("version", String(100), primary_key=True),
    Column("serial", Integer, nullable=False),
    Column("manifest", LargeBinary, nullable=False),  # the exact signed bytes
    Column("signature", LargeBinary, nullable=True),  # the detached .sig, None when unsigned
    Column("manifest_sha256", String(64), nullable=False),
    Column("files", Text, nullable=False),  # JSON {platform: [{path, sha256, size, source}]}
    Column("recorded_at", UTCDateTime(), nullable=False),
)

#: One group moving to one release (``state``: engine.rollouts.model.RolloutState).
rollouts = Table(
    "rollouts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(300), nullable=False),  # the plan's rollout id, group@release
    Column("group_name", String(200), nullable=False),
    Column("release", String(100), nullable=False),
    Column("release_sha256", String(64), nullable=True),
    Column("priority", Integer, nullable=False),
    Column("policy", Text, nullable=False),  # JSON of inventory.models.RolloutPolicy
    Column("maintenance_window", Text, nullable=True),  # JSON of MaintenanceWindow
    Column("state", String(20), nullable=False),
    Column("reason", String(2000), nullable=True),
    Column("current_wave", Integer, nullable=False),  # highest wave opened
    Column("wave_opened_at", UTCDateTime(), nullable=True),
    Column("wave_met_at", UTCDateTime(), nullable=True),  # current wave reached min_success_rate
    Column("resumed_at", UTCDateTime(), nullable=True),
    Column("inventory_digest", String(64), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("finished_at", UTCDateTime(), nullable=True),
    # rollout.after (migration 4): the rollouts that must complete and soak before
    # wave 0 opens, as JSON lists of their ids and names (group@release); null: none.
    Column("after_ids", Text, nullable=True),
    Column("after_names", Text, nullable=True),
    # When the rollout completed (migration 5); kept when it is superseded later.
    Column("completed_at", UTCDateTime(), nullable=True),
    # The release's requires: runtime (migration 15): some devices may wait for it.
    Column("requires_runtime", String(200), nullable=True),
    # What the rollout moves (migration 14): "agent" releases, or "runtime" releases.
    Column("component", String(20), nullable=False, server_default="agent"),
    # The channel the group follows and its release was resolved from (migration 16).
    Column("channel", String(100), nullable=True),
    Index("ix_rollouts_group_state", "group_name", "state"),
    Index("ix_rollouts_state", "state"),
)

#: Each device of a rollout (``state``: engine.rollouts.model.DeviceState).
rollout_devices = Table(
    "rollout_devices",
    metadata,
    Column("rollout_id", Integer, ForeignKey("rollouts.id"), primary_key=True),
    Column("device", String(200), primary_key=True),
    Column("wave", Integer, nullable=False),
    Column("position", Float, nullable=False),  # stable order inside the wave
    Column("platform", String(16), nullable=False),
    Column("from_version", String(100), nullable=True),
    Column("state", String(20), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("reason", String(2000), nullable=True),
    Column("rollback_to", String(100), nullable=True),
    Column("offered_at", UTCDateTime(), nullable=True),
    Column("started_at", UTCDateTime(), nullable=True),
    Column("finished_at", UTCDateTime(), nullable=True),
    Column("retry_at", UTCDateTime(), nullable=True),
    Column("updated_at", UTCDateTime(), nullable=False),
    # The runtime version a pending device must report before it is offered the
    # release (a specifier from the release's requires:, migration 15); null: none.
    Column("requires_runtime", String(200), nullable=True),
    # The config digest the device must report to succeed (migration 13); None: any.
    Column("config_digest", String(80), nullable=True),
    Index("ix_rollout_devices_device_state", "device", "state"),
    Index("ix_rollout_devices_rollout_state", "rollout_id", "state", "wave", "position"),
)

#: The agent's CPU and memory per device and release, summed from the samples its runtime
#: sends with check-ins (states.protocol.PerformanceSample); see docs/metrics.md.
performance = Table(
    "performance",
    metadata,
    Column("device", String(200), primary_key=True),
    Column("version", String(100), primary_key=True),
    Column("samples", Integer, nullable=False),
    Column("cpu_samples", Integer, nullable=False),  # samples with a CPU figure
    Column("cpu_sum", Float, nullable=False),  # percent
    Column("rss_sum", Float, nullable=False),  # bytes
    Column("rss_last", BigInteger, nullable=False),
    Column("rss_max", BigInteger, nullable=False),
    Column("first_at", UTCDateTime(), nullable=False),
    Column("last_at", UTCDateTime(), nullable=False),
)

#: The rollout controller's leader lease on SQLite (PostgreSQL uses an advisory lock).
controller_lease = Table(
    "controller_lease",
    metadata,
    Column("name", String(50), primary_key=True),
    Column("owner", String(100), nullable=False),
    Column("acquired_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
    Column("generation", Integer(), nullable=False, default=0),
)

#: Webhook notifications, written in the transaction of the change they announce and
#: sent from there (an outbox, migration 8): pending until delivered or given up.
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("delivery", String(64), nullable=False, unique=True),
    Column("event", String(100), nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", UTCDateTime(), nullable=False),
    Column("status", String(16), nullable=False),
    Column("last_error", String(500), nullable=True),
    Column("delivered_at", UTCDateTime(), nullable=True),
    Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
)
