"""The device API's queries, as plain SQL: they run on every check-in.

Statements go straight to the driver's connection underneath the caller's
SQLAlchemy transaction (same connection, same transaction), skipping
SQLAlchemy's execution machinery, which costs more than the statements
themselves; values are typed here (SQLite keeps instants as fixed-width ISO
text, see engine.store._types).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection

from engine.server._auth import TokenRow
from engine.store._reports import components_text, features_text
from engine.store._types import format_utc
from states.protocol import CheckinRequest, Heartbeat, StepEvent

__all__ = [
    "DeviceSql",
    "insert_events",
    "lookup_token",
    "lookup_tokens",
    "performance_params",
    "prune_events",
    "read_heartbeat",
    "report_params",
    "upsert_checkin",
    "upsert_heartbeat",
]

_REPORT_COLUMNS = (
    "device",
    "agent_version",
    "platform",
    "last_seen",
    "runtime_version",
    "known_good",
    "last_result",
    "updated_at",
    "tx_target",
    "tx_phase",
    "tx_attempts",
    "tx_detail",
    "agent_running",
    "adoption",
    "adopted_version",
    "adoption_detail",
    "python_version",
    "os_version",
    "components",
    "runtime_target",
    "runtime_result",
    "runtime_detail",
    "config_digest",
    "features",
)
#: Report columns a check-in without them leaves as they were: an adoption is said once
#: and stays what the device adopted.
_KEPT_COLUMNS = frozenset({"adoption", "adopted_version", "adoption_detail"})
_HEARTBEAT_COLUMNS = ("device", "version", "at", "pid", "received_at")
_EVENT_COLUMNS = ("device", "target", "step", "status", "detail", "at", "received_at")


def _upsert(
    table: str,
    columns: Sequence[str],
    mark: str,
    kept: frozenset[str] = frozenset(),
    newer: str | None = None,
) -> str:
    # ``kept`` columns change only when the first of them is given (all of them at once).
    values = ", ".join(mark.format(c) for c in columns)
    key = next((c for c in columns if c in kept), "")
    sets = ", ".join(
        f"{c} = CASE WHEN excluded.{key} IS NULL THEN {table}.{c} ELSE excluded.{c} END"
        if c in kept
        else f"{c} = excluded.{c}"
        for c in columns[1:]
    )
    # ``newer``: a buffered (write-behind) row never replaces a newer one.
    guard = f" WHERE {table}.{newer} <= excluded.{newer}" if newer else ""
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({values}) "
        f"ON CONFLICT ({columns[0]}) DO UPDATE SET {sets}{guard}"
    )


class DeviceSql:
    """The statements for one dialect, and how it wants instants bound."""

    def __init__(self, dialect: str) -> None:
        """Build the statements for ``dialect`` ("sqlite" or "postgresql")."""
        self.sqlite = dialect == "sqlite"
        mark = ":{}" if self.sqlite else "%({})s"
        self.report = _upsert("reports", _REPORT_COLUMNS, mark, _KEPT_COLUMNS, "last_seen")
        self.heartbeat = _upsert("heartbeats", _HEARTBEAT_COLUMNS, mark)
        self.event = (
            f"INSERT INTO events ({', '.join(_EVENT_COLUMNS)}) "
            f"VALUES ({', '.join(mark.format(c) for c in _EVENT_COLUMNS)})"
        )
        self.token = (
            "SELECT token_hash, revoked_at, replaced_hash, replaced_at, replaced_how "
            "FROM devices WHERE device = " + mark.format("device")
        )
        self.download_started = (
            "SELECT max(at) FROM events WHERE device = "
            + mark.format("device")
            + " AND target = "
            + mark.format("target")
            + " AND step = 'download' AND status = 'started'"
        )
        greatest = "max" if self.sqlite else "greatest"
        self.performance = (
            "INSERT INTO performance (device, version, samples, cpu_samples, cpu_sum, rss_sum, "
            "rss_last, rss_max, first_at, last_at) VALUES ("
            + ", ".join(
                mark.format(c)
                for c in (
                    "device",
                    "version",
                    "one",
                    "cpu_one",
                    "cpu",
                    "rss",
                    "rss",
                    "rss",
                    "at",
                    "at",
                )
            )
            + ") ON CONFLICT (device, version) DO UPDATE SET "
            "samples = performance.samples + 1, "
            "cpu_samples = performance.cpu_samples + excluded.cpu_samples, "
            "cpu_sum = performance.cpu_sum + excluded.cpu_sum, "
            "rss_sum = performance.rss_sum + excluded.rss_sum, "
            "rss_last = excluded.rss_last, "
            f"rss_max = {greatest}(performance.rss_max, excluded.rss_max), "
            "last_at = excluded.last_at"
        )
        self.prune_device_events = (
            "DELETE FROM events WHERE device = {d} AND id <= (SELECT id FROM events "
            "WHERE device = {d} ORDER BY id DESC LIMIT 1 OFFSET {k})"
        ).format(d=mark.format("device"), k=mark.format("keep"))
        self.prune_old_events = (
            "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE received_at < "
            + mark.format("cutoff")
            + f" LIMIT {PRUNE_BATCH})"
        )
        # Many devices in one statement: a JSON array (SQLite) or an array (psycopg).
        many = "IN (SELECT value FROM json_each(:devices))" if self.sqlite else "= ANY(%(devices)s)"
        self.tokens = (
            "SELECT device, token_hash, revoked_at, replaced_hash, replaced_at, replaced_how "
            f"FROM devices WHERE device {many}"
        )
        self.read_heartbeat = (
            "SELECT version, at, pid FROM heartbeats WHERE device = " + mark.format("device")
        )

    def instant(self, value: datetime) -> Any:
        """``value`` as this driver binds a UTCDateTime column (a naive time is taken as UTC)."""
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return format_utc(value) if self.sqlite else value

    def read_instant(self, value: Any) -> datetime:
        """A UTCDateTime column's value as an aware datetime."""
        if isinstance(value, str):
            return datetime.fromisoformat(value)
        assert isinstance(value, datetime)
        return value


def _driver(conn: Connection) -> Any:
    """The DBAPI connection under ``conn`` (inside its transaction)."""
    return conn.connection.driver_connection


def lookup_token(conn: Connection, sql: DeviceSql, device: str) -> TokenRow | None:
    """The credential row of ``device``, or None when it never enrolled."""
    row = _driver(conn).execute(sql.token, {"device": device}).fetchone()
    return None if row is None else _token_row(sql, row)


def lookup_tokens(conn: Connection, sql: DeviceSql, devices: Sequence[str]) -> dict[str, TokenRow]:
    """The credential of each enrolled device among ``devices`` (one query)."""
    bound: Any = json.dumps(list(devices)) if sql.sqlite else list(devices)
    rows = _driver(conn).execute(sql.tokens, {"devices": bound}).fetchall()
    return {str(r[0]): _token_row(sql, r[1:]) for r in rows}


def _token_row(sql: DeviceSql, row: Sequence[Any]) -> TokenRow:
    """(token_hash, revoked_at, replaced_hash, replaced_at, replaced_how) as a TokenRow."""
    replaced = None
    if row[2] is not None:
        when = "" if row[3] is None else f"at {sql.read_instant(row[3]).isoformat()} "
        replaced = f"{when}by {row[4] or 'a new enrollment'}"
    return TokenRow(str(row[0]), row[1] is not None, row[2], replaced)


def upsert_checkin(
    conn: Connection, sql: DeviceSql, device: str, body: CheckinRequest, now: datetime
) -> None:
    """Record a check-in as the device's report (one row per device) and its performance sample."""
    _driver(conn).execute(sql.report, report_params(sql, device, body, now))
    sample = performance_params(sql, device, body, now)
    if sample is not None:
        _driver(conn).execute(sql.performance, sample)


def report_params(
    sql: DeviceSql, device: str, body: CheckinRequest, now: datetime
) -> dict[str, Any]:
    """The report row a check-in writes, bound for ``sql.report``."""
    tx = body.transaction
    adopted = body.adoption
    stamp = sql.instant(now)
    return {
        "device": device,
        "agent_version": None if body.agent_version is None else str(body.agent_version),
        "platform": body.platform.value,
        "last_seen": stamp,
        "runtime_version": body.runtime_version,
        "known_good": None if body.known_good is None else str(body.known_good),
        "last_result": None if tx is None else tx.result,
        "updated_at": stamp,
        "tx_target": None if tx is None or tx.target is None else str(tx.target),
        "tx_phase": None if tx is None else tx.phase,
        "tx_attempts": None if tx is None else tx.attempts,
        "tx_detail": None if tx is None else tx.detail,
        "agent_running": body.agent_running,
        "adoption": None if adopted is None else adopted.status,
        "adopted_version": None
        if adopted is None or adopted.version is None
        else str(adopted.version),
        "adoption_detail": None if adopted is None else adopted.detail,
        "python_version": body.python_version,
        "os_version": body.os_version,
        "components": components_text(body.components),
        "config_digest": body.config_digest,
        "features": _features_text(tuple(body.features)),
        **runtime_update_params(body),
    }


@lru_cache(maxsize=64)
def _features_text(features: tuple[str, ...]) -> str | None:
    """``features_text`` once per distinct list: a fleet's runtimes send a handful."""
    return features_text(features)


def runtime_update_params(body: CheckinRequest) -> dict[str, Any]:
    """The report columns of the check-in's runtime self-update outcome (None when absent)."""
    update = body.runtime_update
    if update is None:
        return {"runtime_target": None, "runtime_result": None, "runtime_detail": None}
    return {
        "runtime_target": update.target,
        "runtime_result": update.result,
        "runtime_detail": update.detail,
    }


def performance_params(
    sql: DeviceSql, device: str, body: CheckinRequest, now: datetime
) -> dict[str, Any] | None:
    """The performance sample a check-in adds (bound for ``sql.performance``), or None."""
    perf = body.performance
    if perf is None:
        return None
    cpu = perf.cpu_percent
    return {
        "device": device,
        "version": str(perf.version),
        "one": 1,
        "cpu_one": 0 if cpu is None else 1,
        "cpu": 0.0 if cpu is None else cpu,
        "rss": perf.rss_bytes,
        "at": sql.instant(now),
    }


def upsert_heartbeat(
    conn: Connection, sql: DeviceSql, device: str, beat: Heartbeat, now: datetime
) -> None:
    """Keep ``beat`` as the device's latest heartbeat."""
    _driver(conn).execute(
        sql.heartbeat,
        {
            "device": device,
            "version": str(beat.version),
            "at": sql.instant(beat.at),
            "pid": beat.pid,
            "received_at": sql.instant(now),
        },
    )


def read_heartbeat(conn: Connection, sql: DeviceSql, device: str) -> Heartbeat | None:
    """The device's latest heartbeat as recorded, or None."""
    row = _driver(conn).execute(sql.read_heartbeat, {"device": device}).fetchone()
    if row is None:
        return None
    return Heartbeat(version=row[0], at=sql.read_instant(row[1]), pid=row[2])


def insert_events(
    conn: Connection, sql: DeviceSql, device: str, events: Sequence[StepEvent], now: datetime
) -> None:
    """Append the device's step events."""
    if not events:
        return
    received = sql.instant(now)
    _driver(conn).cursor().executemany(
        sql.event,
        [
            {
                "device": device,
                "target": str(e.target),
                "step": str(e.step),
                "status": e.status,
                "detail": e.detail,
                "at": sql.instant(e.at),
                "received_at": received,
            }
            for e in events
        ],
    )


#: Events past their retention deleted at most per call (a short write lock, even on a
#: table that grew before retention applied).
PRUNE_BATCH = 5000


def prune_events(
    conn: Connection, sql: DeviceSql, device: str, keep: int, cutoff: datetime | None
) -> None:
    """Keep only ``device``'s newest ``keep`` events; with ``cutoff``, also delete up to
    PRUNE_BATCH events of any device received before it."""
    driver = _driver(conn)
    driver.execute(sql.prune_device_events, {"device": device, "keep": keep})
    if cutoff is not None:
        driver.execute(sql.prune_old_events, {"cutoff": sql.instant(cutoff)})
