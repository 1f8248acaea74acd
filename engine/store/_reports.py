"""Reading and writing device reports (``states.report.Report``) in the ``reports`` table."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Select, select, text

from engine.errors import StoreError
from engine.store._types import format_utc
from engine.store.schema import reports
from fleetbase.gcpause import gc_paused
from fleetbase.platform import Platform
from fleetbase.trusted import trusted_builder
from fleetbase.version import Version, VersionError
from states.report import Report

__all__ = [
    "ReportDigest",
    "UpsertCounts",
    "components_text",
    "digest",
    "digest_reports",
    "features_text",
    "load",
    "load_one",
    "load_with_digest",
    "upsert",
]

#: (count, sha256 hex over sorted (device, agent_version, last_seen), latest last_seen)
ReportDigest = tuple[int, str, datetime | None]

#: Above this many devices, stored rows are read by one full scan, not by IN (...).
_IN_LIMIT = 500

_PLATFORMS: dict[str, Platform] = {p.value: p for p in Platform}


@dataclass(frozen=True)
class UpsertCounts:
    """What an upsert did: rows inserted, rows replaced, reports older than the stored row."""

    new: int = 0
    updated: int = 0
    older: int = 0

    @property
    def written(self) -> int:
        """Rows inserted or replaced."""
        return self.new + self.updated


#: Columns a Report fills. Other columns of the table (the server's record of the
#: last transaction) belong to their writers and an upsert leaves them as they are.
_REPORT_COLUMNS = (
    "agent_version",
    "platform",
    "last_seen",
    "runtime_version",
    "known_good",
    "last_result",
    "config_digest",
    "updated_at",
    "python_version",
    "os_version",
    "components",
    "features",
)


def _row(report: Report, now: datetime) -> dict[str, Any]:
    return {
        "device": report.device,
        "agent_version": None if report.agent_version is None else str(report.agent_version),
        "platform": None if report.platform is None else report.platform.value,
        "last_seen": report.last_seen,
        "runtime_version": report.runtime_version,
        "known_good": None if report.known_good is None else str(report.known_good),
        "last_result": report.last_result,
        "config_digest": report.config_digest,
        "updated_at": now,
        "python_version": report.python_version,
        "os_version": report.os_version,
        "components": components_text(report.components),
        "features": features_text(report.features),
    }


def _stored_query(devices: list[str]) -> Select[str, datetime]:
    query = select(reports.c.device, reports.c.last_seen)
    if len(devices) > _IN_LIMIT:
        # One scan of the table beats big IN lists: psycopg prepares a query
        # after a few runs and PostgreSQL's generic plan then compares every
        # row with every listed value (seconds per 5000 values at 100k rows).
        return query
    return query.where(reports.c.device.in_(devices))


def upsert(conn: Connection, items: Iterable[Report]) -> UpsertCounts:
    """Insert new devices' reports and replace older ones, in the caller's transaction.

    A report whose ``last_seen`` is before the stored one for its device is
    not written (an old export must not undo what a device said later); when
    the same device appears more than once, the last one given counts.
    """
    latest: dict[str, Report] = {}
    for report in items:
        latest[report.device] = report
    if not latest:
        return UpsertCounts()
    stored = {device: seen for device, seen in conn.execute(_stored_query(list(latest)))}
    new = updated = older = 0
    for device, report in latest.items():
        seen = stored.get(device)
        if seen is None:
            new += 1
        elif report.last_seen >= seen:
            updated += 1
        else:
            older += 1
    # Imported here: the PostgreSQL dialect costs a reading command on SQLite ~40 ms.
    from sqlalchemy.dialects import postgresql, sqlite

    now = datetime.now(UTC)
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    stmt = insert(reports)
    stmt = stmt.on_conflict_do_update(
        index_elements=[reports.c.device],
        set_={name: stmt.excluded[name] for name in _REPORT_COLUMNS},
        where=stmt.excluded.last_seen >= reports.c.last_seen,
    )
    conn.execute(stmt, [_row(r, now) for r in latest.values()])
    return UpsertCounts(new=new, updated=updated, older=older)


class _Versions(dict[str, Version]):
    """Parses each distinct version text once: a fleet runs a handful of versions."""

    def __missing__(self, text: str) -> Version:
        value = self[text] = Version(text)
        return value


#: A Report from a dict of every field's value, unvalidated (once per stored row).
_report = trusted_builder(Report)


def components_text(components: Mapping[str, str] | None) -> str | None:
    """A device's reported components as the reports table keeps them (JSON), None as None."""
    return None if components is None else json.dumps(dict(components), sort_keys=True)


def features_text(features: Iterable[str] | None) -> str | None:
    """A runtime's features as the reports table keeps them (a sorted JSON list), None as None."""
    return None if features is None else json.dumps(sorted(set(features)))


class _Features(dict[str, tuple[str, ...]]):
    """Parses each distinct stored features text once: a fleet reports a handful of sets."""

    def __missing__(self, text: str) -> tuple[str, ...]:
        value = json.loads(text)
        if not isinstance(value, list):
            raise ValueError(f"features {text[:100]!r} is not a JSON list")
        found = self[text] = tuple(str(v) for v in value)
        return found


def _components(text: str) -> dict[str, str]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"components {text[:100]!r} is not a JSON object")
    return {str(k): str(v) for k, v in value.items()}


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo is UTC else value.astimezone(UTC)


_SELECT = (
    "SELECT device, agent_version, platform, last_seen, runtime_version, known_good, "
    "last_result, python_version, os_version, components, config_digest, features FROM reports"
)


def _fetch_all(conn: Connection, query: str) -> list[Any]:
    """Rows of a parameterless query as the driver's tuples, in ``conn``'s transaction.

    The driver's cursor skips SQLAlchemy's Row objects and result processing:
    a quarter of the time of loading 100k reports. Values are typed by the caller.
    """
    cursor = conn.connection.cursor()
    try:
        cursor.execute(query)
        return list(cursor.fetchall())
    finally:
        cursor.close()


def _reports_from(conn: Connection, rows: Iterable[Any]) -> dict[str, Report]:
    # SQLite keeps our fixed ISO text; PostgreSQL sessions run in UTC already.
    as_utc: Callable[[Any], datetime] = (
        datetime.fromisoformat if conn.dialect.name == "sqlite" else _utc
    )
    versions = _Versions()
    feature_sets = _Features()
    platforms = _PLATFORMS
    report = _report
    out: dict[str, Report] = {}
    for (
        device,
        agent_version,
        platform,
        last_seen,
        runtime_version,
        known_good,
        result,
        python_version,
        os_version,
        components,
        cfg,
        features,
    ) in rows:
        try:
            values = {
                "device": device,
                "agent_version": None if agent_version is None else versions[agent_version],
                "platform": None if platform is None else platforms[platform],
                "last_seen": as_utc(last_seen),
                "runtime_version": runtime_version,
                "known_good": None if known_good is None else versions[known_good],
                "last_result": result,
                "python_version": python_version,
                "os_version": os_version,
                "components": None if components is None else _components(components),
                "config_digest": cfg,
                "features": None if features is None else feature_sets[features],
            }
        except (VersionError, KeyError, ValueError) as e:
            raise StoreError(f"stored report of device {device!r} is unreadable: {e}") from e
        # What Report.model_construct(**values) does, at a fraction of its cost;
        # tests/store pins the equality with model_construct.
        out[device] = report(values)
    return out


def load(conn: Connection) -> dict[str, Report]:
    """Every stored report by device id."""
    with gc_paused():
        return _reports_from(conn, _fetch_all(conn, _SELECT))


def load_one(conn: Connection, device: str) -> Report | None:
    """The stored report of one device, or None."""
    rows = conn.execute(text(f"{_SELECT} WHERE device = :device"), {"device": device}).all()
    return _reports_from(conn, rows).get(device)


def _digest(rows: list[tuple[str, str | None, str]]) -> ReportDigest:
    # Device ids are unique, so this sorts by device (code point order on
    # every backend; database collations differ).
    rows.sort()
    text = "".join([f"{device}\t{version or ''}\t{seen}\n" for device, version, seen in rows])
    latest = max((seen for _, _, seen in rows), default=None)
    return (
        len(rows),
        hashlib.sha256(text.encode()).hexdigest(),
        None if latest is None else datetime.fromisoformat(latest),
    )


#: last_seen as ``format_utc`` writes it, computed by PostgreSQL itself.
_PG_UTC_TEXT = "to_char(last_seen AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"')"


def digest(conn: Connection) -> ReportDigest:
    """Digest of the stored reports; equal to ``digest_reports`` of what ``load`` returns."""
    # SQLite stores last_seen as format_utc text already.
    seen = "last_seen" if conn.dialect.name == "sqlite" else _PG_UTC_TEXT
    query = f"SELECT device, agent_version, {seen} FROM reports"
    with gc_paused():
        return _digest([(d, v, t) for d, v, t in _fetch_all(conn, query)])


def load_with_digest(conn: Connection) -> tuple[dict[str, Report], ReportDigest]:
    """Every stored report by device id and their digest, as ``load`` and ``digest`` give them.

    On SQLite both come from one read of the table (it keeps ``last_seen`` as
    the digest's text). PostgreSQL reads committed rows statement by statement,
    so there the digest is read first: a report arriving in between makes a
    saved plan look stale, never fresh with a report it did not see.
    """
    if conn.dialect.name != "sqlite":
        summary = digest(conn)
        return load(conn), summary
    with gc_paused():
        rows = _fetch_all(conn, _SELECT)
        summary = _digest([(row[0], row[1], row[3]) for row in rows])
        return _reports_from(conn, rows), summary


def digest_reports(items: Iterable[Report]) -> ReportDigest:
    """(count, sha256 over sorted (device, agent_version, last_seen), latest last_seen).

    Saved plans record it to notice when the reports they were computed from
    have changed.
    """
    return _digest(
        [
            (
                r.device,
                None if r.agent_version is None else str(r.agent_version),
                format_utc(r.last_seen),
            )
            for r in items
        ]
    )
