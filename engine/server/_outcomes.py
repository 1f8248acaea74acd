"""Update outcomes and durations counted from the step events devices post.

A device posts every phase of its transaction as a step event (in batches,
each event once). A forward step that ``failed`` ends that attempt: it is
counted as ``failed`` at that step (the runtime then rolls back, or stops
before the swap); ``commit`` ``ok`` is counted as ``committed``, and the time
since the device's last ``download`` ``started`` of that release goes into
the duration histogram.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Connection

from engine.instruments import instruments
from engine.server._device_db import DeviceSql
from states.plan import StepName
from states.protocol import StepEvent

__all__ = ["count_step_events"]

_FORWARD = frozenset(s.value for s in StepName)
_START = StepName.DOWNLOAD.value
_COMMIT = StepName.COMMIT.value


def count_step_events(
    conn: Connection, sql: DeviceSql, device: str, events: Sequence[StepEvent]
) -> None:
    """Count ``events`` (already stored in ``conn``'s transaction) into the instruments."""
    m = instruments()
    for e in events:
        step = str(e.step)
        m.events.labels(step, e.status).inc()
        if step not in _FORWARD:
            continue
        release = str(e.target)
        if e.status == "failed":
            m.update_outcomes.labels(release, "failed", step).inc()
        elif step == _COMMIT and e.status == "ok":
            m.update_outcomes.labels(release, "committed", "none").inc()
            started = _download_started(conn, sql, device, release)
            if started is not None:
                seconds = (e.at - started).total_seconds()
                if seconds >= 0:
                    m.update_duration.labels(release).observe(seconds)


def _download_started(
    conn: Connection, sql: DeviceSql, device: str, release: str
) -> datetime | None:
    """When the device last started downloading ``release`` (None: no such event)."""
    raw = conn.connection.driver_connection
    assert raw is not None
    row = raw.execute(sql.download_started, {"device": device, "target": release}).fetchone()
    return None if row is None or row[0] is None else sql.read_instant(row[0])
