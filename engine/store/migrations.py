"""Ordered schema migrations: the history of every table in ``engine.store.schema``.

To change the schema:

1. change or add the table in ``engine/store/schema.py`` (what queries use);
2. write a function ``_NNNN_what(conn)`` below that brings a database at the
   previous version to the new shape, with its own table definitions (never
   import ``schema`` here: a migration must keep doing what it did when it
   was written, whatever ``schema.py`` says later);
3. append ``Migration(NNNN, "what", _NNNN_what)`` to ``MIGRATIONS``.

Each migration runs in its own transaction under a database-wide lock
(``pg_advisory_xact_lock`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), so
concurrent ``engine serve`` replicas apply it exactly once; the runner records
it in ``schema_migrations``. Never edit or reorder a migration that was
released: add a new one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
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

__all__ = ["MIGRATIONS", "Migration"]


@dataclass(frozen=True)
class Migration:
    """One step of the schema's history: version ``version`` is reached by ``apply``."""

    version: int
    name: str
    apply: Callable[[Connection], None]


def _0001_reports(conn: Connection) -> None:
    md = MetaData()
    Table(
        "reports",
        md,
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
    md.create_all(conn)


def _0002_devices(conn: Connection) -> None:
    md = MetaData()
    Table(
        "devices",
        md,
        Column("device", String(200), primary_key=True),
        Column("platform", String(16), nullable=False),
        Column("token_hash", String(64), nullable=False),
        Column("enrolled_at", UTCDateTime(), nullable=False),
        Column("revoked_at", UTCDateTime(), nullable=True),
        Column("runtime_version", String(100), nullable=True),
        Column("enrollments", Integer, nullable=False),
    )
    Table(
        "heartbeats",
        md,
        Column("device", String(200), primary_key=True),
        Column("version", String(100), nullable=False),
        Column("at", UTCDateTime(), nullable=False),
        Column("pid", Integer, nullable=True),
        Column("received_at", UTCDateTime(), nullable=False),
    )
    Table(
        "events",
        md,
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
    md.create_all(conn)
    # What the device said about its last transaction, beside its report.
    for column in (
        "tx_target VARCHAR(100)",
        "tx_phase VARCHAR(50)",
        "tx_attempts INTEGER",
        "tx_detail VARCHAR(2000)",
        "agent_running BOOLEAN",
    ):
        conn.exec_driver_sql(f"ALTER TABLE reports ADD COLUMN {column}")


def _0003_rollouts(conn: Connection) -> None:
    md = MetaData()
    Table(
        "releases",
        md,
        Column("version", String(100), primary_key=True),
        Column("serial", Integer, nullable=False),
        Column("manifest", LargeBinary, nullable=False),
        Column("signature", LargeBinary, nullable=True),
        Column("manifest_sha256", String(64), nullable=False),
        Column("files", Text, nullable=False),
        Column("recorded_at", UTCDateTime(), nullable=False),
    )
    Table(
        "rollouts",
        md,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("name", String(300), nullable=False),
        Column("group_name", String(200), nullable=False),
        Column("release", String(100), nullable=False),
        Column("release_sha256", String(64), nullable=True),
        Column("priority", Integer, nullable=False),
        Column("policy", Text, nullable=False),
        Column("maintenance_window", Text, nullable=True),
        Column("state", String(20), nullable=False),
        Column("reason", String(2000), nullable=True),
        Column("current_wave", Integer, nullable=False),
        Column("wave_opened_at", UTCDateTime(), nullable=True),
        Column("wave_met_at", UTCDateTime(), nullable=True),
        Column("resumed_at", UTCDateTime(), nullable=True),
        Column("inventory_digest", String(64), nullable=True),
        Column("created_at", UTCDateTime(), nullable=False),
        Column("updated_at", UTCDateTime(), nullable=False),
        Column("finished_at", UTCDateTime(), nullable=True),
        Index("ix_rollouts_group_state", "group_name", "state"),
        Index("ix_rollouts_state", "state"),
    )
    Table(
        "rollout_devices",
        md,
        Column("rollout_id", Integer, ForeignKey("rollouts.id"), primary_key=True),
        Column("device", String(200), primary_key=True),
        Column("wave", Integer, nullable=False),
        Column("position", Float, nullable=False),
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
        Index("ix_rollout_devices_device_state", "device", "state"),
        Index("ix_rollout_devices_rollout_state", "rollout_id", "state", "wave", "position"),
    )
    Table(
        "controller_lease",
        md,
        Column("name", String(50), primary_key=True),
        Column("owner", String(100), nullable=False),
        Column("acquired_at", UTCDateTime(), nullable=False),
        Column("expires_at", UTCDateTime(), nullable=False),
    )
    md.create_all(conn)


def _0004_rollout_after(conn: Connection) -> None:
    # rollout.after: the gate rollouts (ids and names, JSON lists) a rollout waits for.
    for column in ("after_ids TEXT", "after_names TEXT"):
        conn.exec_driver_sql(f"ALTER TABLE rollouts ADD COLUMN {column}")


def _0005_rollout_completed_at(conn: Connection) -> None:
    # When a rollout completed; kept when a later apply supersedes it, so that the field
    # endpoints can tell a release that completed from one superseded half-way.
    kind = "VARCHAR(32)" if conn.dialect.name == "sqlite" else "TIMESTAMP WITH TIME ZONE"
    conn.exec_driver_sql(f"ALTER TABLE rollouts ADD COLUMN completed_at {kind}")
    conn.exec_driver_sql("UPDATE rollouts SET completed_at = finished_at WHERE state = 'completed'")


def _0006_invites(conn: Connection) -> None:
    # Single-use enrollment codes an operator issues per device (engine devices invite).
    md = MetaData()
    Table(
        "invites",
        md,
        Column("device", String(200), primary_key=True),
        Column("code_hash", String(64), nullable=False),
        Column("created_at", UTCDateTime(), nullable=False),
        Column("expires_at", UTCDateTime(), nullable=False),
        Column("used_at", UTCDateTime(), nullable=True),
    )
    md.create_all(conn)


def _0007_performance(conn: Connection) -> None:
    # The agent's CPU and memory per device and release (performance-impact tracking).
    md = MetaData()
    Table(
        "performance",
        md,
        Column("device", String(200), primary_key=True),
        Column("version", String(100), primary_key=True),
        Column("samples", Integer, nullable=False),
        Column("cpu_samples", Integer, nullable=False),
        Column("cpu_sum", Float, nullable=False),
        Column("rss_sum", Float, nullable=False),
        Column("rss_last", BigInteger, nullable=False),
        Column("rss_max", BigInteger, nullable=False),
        Column("first_at", UTCDateTime(), nullable=False),
        Column("last_at", UTCDateTime(), nullable=False),
    )
    md.create_all(conn)
    # GET /metrics counts devices per version and online state from this index alone.
    conn.exec_driver_sql(
        "CREATE INDEX ix_reports_version_seen ON reports (agent_version, last_seen)"
    )


def _0008_report_adoption(conn: Connection) -> None:
    # How a device's runtime took over the agent it found (CheckinRequest.adoption): known
    # (the release its files are), unknown (files backed up) or empty; kept across check-ins.
    for column in ("adoption VARCHAR(20)", "adopted_version VARCHAR(100)",
                   "adoption_detail VARCHAR(2000)"):  # fmt: skip
        conn.exec_driver_sql(f"ALTER TABLE reports ADD COLUMN {column}")


def _0009_enrollment_requests(conn: Connection) -> None:
    # Device identity: the key a device proved at enrollment, the token a re-enrollment
    # replaced, and re-enrollments awaiting an operator's approval.
    kind = "VARCHAR(32)" if conn.dialect.name == "sqlite" else "TIMESTAMP WITH TIME ZONE"
    for column in (
        "key_hash VARCHAR(64)",
        "replaced_hash VARCHAR(64)",
        f"replaced_at {kind}",
        "replaced_how VARCHAR(100)",
    ):
        conn.exec_driver_sql(f"ALTER TABLE devices ADD COLUMN {column}")
    md = MetaData()
    Table(
        "enrollment_requests",
        md,
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
    md.create_all(conn)


def _0010_webhook_deliveries(conn: Connection) -> None:
    # Webhook outbox: notifications kept until delivered, retried across restarts.
    md = MetaData()
    Table(
        "webhook_deliveries",
        md,
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
    md.create_all(conn)


def _0011_events_received_at(conn: Connection) -> None:
    # engine serve deletes events past their retention by arrival time.
    conn.exec_driver_sql("CREATE INDEX ix_events_received_at ON events (received_at)")


def _0012_lease_generation(conn: Connection) -> None:
    # Fencing the controller's lease: each new holder gets the next generation, and
    # every controller write checks that it still holds its own.
    conn.exec_driver_sql(
        "ALTER TABLE controller_lease ADD COLUMN generation INTEGER NOT NULL DEFAULT 0"
    )


def _0013_config_digests(conn: Connection) -> None:
    # Managed config files and flags: the digest a device reports it runs, and the
    # digest a rollout wants each device to reach.
    conn.exec_driver_sql("ALTER TABLE reports ADD COLUMN config_digest VARCHAR(80)")
    conn.exec_driver_sql("ALTER TABLE rollout_devices ADD COLUMN config_digest VARCHAR(80)")


def _0014_runtime_component(conn: Connection) -> None:
    # Runtime releases rolled out like agent releases: what each rollout moves, and the
    # outcome of a device's last runtime self-update as it reported it.
    conn.exec_driver_sql(
        "ALTER TABLE rollouts ADD COLUMN component VARCHAR(20) NOT NULL DEFAULT 'agent'"
    )
    for column in ("runtime_target VARCHAR(100)", "runtime_result VARCHAR(20)",
                   "runtime_detail VARCHAR(2000)"):  # fmt: skip
        conn.exec_driver_sql(f"ALTER TABLE reports ADD COLUMN {column}")


def _0015_requires(conn: Connection) -> None:
    # Release requirements (requires:): the facts devices report to check them against,
    # and the runtime version a device of a rollout waits for before it is offered.
    for column in ("python_version VARCHAR(100)", "os_version VARCHAR(100)", "components TEXT"):
        conn.exec_driver_sql(f"ALTER TABLE reports ADD COLUMN {column}")
    for table in ("rollouts", "rollout_devices"):
        conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN requires_runtime VARCHAR(200)")


def _0016_report_features(conn: Connection) -> None:
    # What each device's runtime says it can do (CheckinRequest.features, a JSON list):
    # the plan blocks a device whose runtime cannot take what a rollout would offer it.
    # And the channel a rollout's release was resolved from, shown with its group.
    conn.exec_driver_sql("ALTER TABLE reports ADD COLUMN features TEXT")
    conn.exec_driver_sql("ALTER TABLE rollouts ADD COLUMN channel VARCHAR(100)")


#: Every migration, oldest first; versions are 1, 2, 3, ... without gaps.
MIGRATIONS: list[Migration] = [
    Migration(1, "reports", _0001_reports),
    Migration(2, "devices, heartbeats, events", _0002_devices),
    Migration(3, "releases, rollouts, rollout devices, controller lease", _0003_rollouts),
    Migration(4, "rollouts waiting for other rollouts (rollout.after)", _0004_rollout_after),
    Migration(5, "when a rollout completed", _0005_rollout_completed_at),
    Migration(6, "single-use enrollment codes (invites)", _0006_invites),
    Migration(
        7,
        "the agent's CPU and memory per device and release; reports by version and last seen",
        _0007_performance,
    ),
    Migration(8, "what a device's runtime adopted", _0008_report_adoption),
    Migration(9, "device keys, replaced tokens, enrollment requests", _0009_enrollment_requests),
    Migration(10, "webhook deliveries (outbox)", _0010_webhook_deliveries),
    Migration(11, "events by arrival time (retention)", _0011_events_received_at),
    Migration(12, "controller lease generation (fencing)", _0012_lease_generation),
    Migration(13, "config digests reported and targeted", _0013_config_digests),
    Migration(
        14, "runtime releases: rollout component, runtime update reports", _0014_runtime_component
    ),
    Migration(15, "release requirements: device facts, runtime waits", _0015_requires),
    Migration(
        16, "what each device's runtime can do (features); rollout channels", _0016_report_features
    ),
]
