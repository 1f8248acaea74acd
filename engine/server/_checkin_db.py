"""The check-in's database work, off the event loop: one thread per worker, in batches.

The event loop only parses, checks a cached token and queues the check-in
(``CheckinDatabase.checkin``); a store that is slow or locked never stalls
it, so ``/healthz`` and every other request keep being answered. The
check-in thread takes whatever is queued and, per batch:

1. in one *read* transaction (no write lock): looks up the tokens the cache
   lacks (one query) and refuses the wrong ones, then reads the open rollout
   rows of every remaining device (one query) and decides each answer;
2. when some device takes an offer (a rollout state transition), commits
   those conditional UPDATEs, with the reports of those devices, in one
   *durable* write transaction before answering them (no
   ``synchronous_commit=off``; SQLite ``synchronous=FULL`` on this connection);
3. answers the batch with one wake-up of the event loop.

Reports are soft state, sent again at every poll: the other devices' reports
go to a per-worker buffer (one row per device, the newest wins) that a second
thread writes every ``flush_seconds`` in one transaction (write-behind), and
once more on shutdown (``close``). Write transactions wait at most
``CHECKIN_BUSY_TIMEOUT_MS`` for SQLite's lock (then 503 for the devices that
needed it; buffered reports are kept for the next flush); PostgreSQL
connections carry statement and lock timeouts (engine.store._connect).

See docs/adr/0016-checkin-write-path.md.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fastapi import HTTPException
from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from engine.errors import StoreError
from engine.instruments import store_failed
from engine.rollouts.offers import Decision, Offer, decide_offer, offer_rows
from engine.server._auth import MISSING, DeviceTokens, Missing, TokenRow
from engine.server._device_db import (
    DeviceSql,
    lookup_tokens,
    performance_params,
    report_params,
)
from engine.server.settings import OfferFunction
from engine.store import Store
from engine.store._connect import _IMMEDIATE, checkin_session
from states.protocol import CheckinRequest, RuntimeOffer
from states.report import Report

__all__ = ["REPORT_FLUSH_SECONDS", "Answer", "CheckinDatabase", "CheckinJob"]

log = logging.getLogger("engine.server")

#: Default write-behind window of device reports (seconds).
REPORT_FLUSH_SECONDS = 0.2
#: Most check-ins handled in one batch (one read transaction).
MAX_BATCH = 512
_RETRY = {"Retry-After": "5"}


@dataclass(frozen=True)
class Answer:
    """What a check-in hands out: the agent's plan, the runtime release, or neither."""

    offer: Offer | None = None
    runtime: RuntimeOffer | None = None


_NO_ANSWER = Answer()


@dataclass
class CheckinJob:
    """One check-in waiting for the database: what the device sent, and who waits."""

    device: str
    token: str
    row: TokenRow | Missing | None
    request: CheckinRequest
    report: Report
    now: datetime
    future: asyncio.Future[Answer]


#: (job, its answer, or the exception refusing it)
_Outcome = tuple[CheckinJob, Answer, BaseException | None]


class CheckinDatabase:
    """Does the check-ins' database work of one worker (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        sql: DeviceSql,
        tokens: DeviceTokens,
        *,
        offer: OfferFunction | None = None,
        flush_seconds: float = REPORT_FLUSH_SECONDS,
    ) -> None:
        """Check in against ``store``; ``offer`` replaces the built-in offer decision (tests).

        ``flush_seconds`` 0 or less: no write-behind, every report is written
        before its device is answered.
        """
        self._store = store
        self._sql = sql
        self._tokens = tokens
        self._offer = offer
        self._flush_seconds = flush_seconds
        self._queue: deque[CheckinJob] = deque()
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._pending: dict[str, dict[str, Any]] = {}
        #: performance samples add up (never "newest wins"): every one is written
        self._samples: list[dict[str, Any]] = []
        self._pending_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._conns: dict[str, Connection] = {}

    # -- the event loop's side -----------------------------------------------------------

    async def checkin(self, job: CheckinJob) -> Answer:
        """Queue ``job`` and wait for its answer; raises what refuses it (HTTPException)."""
        if not self._threads:
            self._start()
        self._queue.append(job)
        self._wake.set()
        return await job.future

    # -- lifecycle -----------------------------------------------------------------------

    def _start(self) -> None:
        with self._start_lock:
            if self._threads or self._closing.is_set():
                return
            roles = [("checkin-db", self._run)]
            if self._flush_seconds > 0:
                roles.append(("report-flush", self._flush_loop))
            for name, target in roles:
                thread = threading.Thread(target=target, name=name, daemon=True)
                thread.start()
                self._threads.append(thread)

    def flush(self) -> None:
        """Write every buffered report now (raises StoreError when the store fails)."""
        with self._flush_lock:
            self._flush(self._connection("flush"))

    def close(self) -> None:
        """Answer what is queued, write the buffered reports, stop the threads."""
        self._closing.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=30)
        try:
            self.flush()
        except StoreError as e:
            log.error("reports of %d devices not written at shutdown: %s", len(self._pending), e)
        for role in list(self._conns):
            self._drop(role)  # never back to the pool with the check-in session settings

    # -- the check-in thread -------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch: list[CheckinJob] = []
                while self._queue and len(batch) < MAX_BATCH:
                    batch.append(self._queue.popleft())
                outcomes = self._answer(batch)
                _settle(outcomes)
            if self._closing.is_set():
                return

    def _answer(self, batch: list[CheckinJob]) -> list[_Outcome]:
        # Whatever fails (SQLAlchemy's errors, the driver's own from the statements sent
        # to it directly, a timeout), the thread lives on and the batch is answered 503.
        try:
            return self._decide(batch)
        except Exception as e:
            self._drop("checkin")
            store_failed("device_write")
            if isinstance(e, StoreError | SQLAlchemyError):
                log.error("check-ins of %d devices not stored: %s", len(batch), e)
            else:
                log.exception("check-ins of %d devices not stored", len(batch))
            refusal = HTTPException(
                503, "the server cannot reach its store; try again later", _RETRY
            )
            return [(job, _NO_ANSWER, refusal) for job in batch]

    def _decide(self, batch: list[CheckinJob]) -> list[_Outcome]:
        outcomes: list[_Outcome] = []
        live: list[CheckinJob] = []
        decisions: list[Decision] = []
        conn = self._connection("checkin")
        with _transaction(conn, immediate=False):
            unknown = sorted({job.device for job in batch if job.row is MISSING})
            found = lookup_tokens(conn, self._sql, unknown) if unknown else {}
            for device in unknown:
                self._tokens.remember(device, found.get(device))
            for job in batch:
                if job.row is MISSING:  # else its cached row was checked on the event loop
                    try:
                        self._tokens.verify(job.device, job.token, found.get(job.device))
                    except HTTPException as e:
                        outcomes.append((job, _NO_ANSWER, e))
                        continue
                live.append(job)
            if self._offer is None and live:
                rows = offer_rows(conn, list({job.device: None for job in live}))
                decisions = [
                    decide_offer(
                        conn,
                        j.device,
                        rows.get(j.device, ()),
                        j.report,
                        j.now,
                        runtime_failed=_runtime_failed(j.request),
                    )
                    for j in live
                ]
        if self._offer is not None:
            return outcomes + self._custom(live)
        if self._flush_seconds <= 0:  # no write-behind: every report with the takes
            taking = list(zip(live, decisions, strict=True))
        else:
            taking = [(j, d) for j, d in zip(live, decisions, strict=True) if _takes(d)]
        if taking:
            outcomes.extend((j, answer, None) for j, answer in self._take(conn, taking))
        if self._flush_seconds <= 0:
            return outcomes
        later = [(j, d) for j, d in zip(live, decisions, strict=True) if not _takes(d)]
        self._buffer([j for j, _ in later])
        outcomes.extend((j, Answer(d.offer, d.runtime), None) for j, d in later)
        return outcomes

    def _take(
        self, conn: Connection, taking: list[tuple[CheckinJob, Decision]]
    ) -> list[tuple[CheckinJob, Answer]]:
        """Commit the takes (rollout state transitions) and those devices' reports durably;
        each job's answer without what another replica or the controller took meanwhile."""
        with self._pending_lock:
            for job, _ in taking:
                self._pending.pop(job.device, None)
        with _transaction(conn, immediate=True):
            done = [(job, _apply(conn, d)) for job, d in taking]
            _write_reports(conn, self._sql, [_params(self._sql, j) for j, _ in taking])
            _write_samples(conn, self._sql, _samples(self._sql, [j for j, _ in taking]))
        return done

    def _custom(self, live: list[CheckinJob]) -> list[_Outcome]:
        """The injected offer function's path: one write transaction, reports written at once."""
        assert self._offer is not None
        conn = self._connection("checkin")
        outcomes: list[_Outcome] = []
        with _transaction(conn, immediate=True):
            _write_reports(conn, self._sql, [_params(self._sql, j) for j in live])
            _write_samples(conn, self._sql, _samples(self._sql, live))
            for job in live:
                offer = self._offer(conn, job.device, job.report, job.now)
                outcomes.append((job, Answer(offer), None))
        return outcomes

    # -- write-behind of reports ---------------------------------------------------------

    def _buffer(self, jobs: Sequence[CheckinJob]) -> None:
        if not jobs:
            return
        params = [(job.device, _params(self._sql, job)) for job in jobs]
        samples = _samples(self._sql, jobs)
        with self._pending_lock:
            for device, p in params:
                self._pending[device] = p
            self._samples.extend(samples)

    def _flush_loop(self) -> None:
        while not self._closing.wait(self._flush_seconds):
            try:
                with self._flush_lock:
                    self._flush(self._connection("flush"))
            except StoreError as e:
                log.warning("buffered reports not written yet (kept for the next try): %s", e)
            except Exception:
                log.exception("writing buffered reports failed")

    def _flush(self, conn: Connection) -> None:
        with self._pending_lock:
            batch, self._pending = self._pending, {}
            samples, self._samples = self._samples, []
        if not batch and not samples:
            return
        try:
            with _transaction(conn, immediate=True, soft=True):
                _write_reports(conn, self._sql, list(batch.values()))
                _write_samples(conn, self._sql, samples)
        except Exception as e:  # the driver's errors too (statements sent to it directly)
            self._drop("flush")
            with self._pending_lock:  # keep them; a newer report of a device wins
                for device, p in batch.items():
                    self._pending.setdefault(device, p)
                self._samples[:0] = samples
            raise StoreError(f"{self._store.display_url} failed: {e}") from e

    # -- connections ---------------------------------------------------------------------

    def _connection(self, role: str) -> Connection:
        """This role's own connection (one per thread), opened on first use."""
        conn = self._conns.get(role)
        if conn is None or conn.closed or conn.invalidated:
            try:
                conn = self._store.engine.connect()
                checkin_session(conn, durable=role == "checkin")
            except SQLAlchemyError as e:
                raise StoreError(f"{self._store.display_url} failed: {e}") from e
            self._conns[role] = conn
        return conn

    def _drop(self, role: str) -> None:
        """Close this role's connection for good (the next use opens a new one)."""
        conn = self._conns.pop(role, None)
        if conn is not None:
            try:
                conn.invalidate()
                conn.close()
            except SQLAlchemyError:
                log.debug("closing a broken check-in connection failed", exc_info=True)


@contextmanager
def _transaction(conn: Connection, *, immediate: bool, soft: bool = False) -> Iterator[None]:
    """A transaction on ``conn``: SQLite BEGIN IMMEDIATE when ``immediate``.

    ``soft``: PostgreSQL commits it without waiting for the WAL flush (soft
    state only, never a rollout state transition).
    """
    conn.execution_options(**{_IMMEDIATE: immediate})
    with conn.begin():
        if soft and conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
        yield


def _takes(d: Decision) -> bool:
    return d.take is not None or d.runtime_take is not None


def _apply(conn: Connection, d: Decision) -> Answer:
    """Run the decision's takes; what remains of its answer (a take that changed no row
    drops its part: another replica handed it out, or the controller took it back)."""
    offer = d.offer if d.take is None or d.take.apply(conn) else None
    runtime = d.runtime if d.runtime_take is None or d.runtime_take.apply(conn) else None
    return Answer(offer, runtime)


def _runtime_failed(request: CheckinRequest) -> str | None:
    """The runtime release the check-in reports it reverted or could not install."""
    update = request.runtime_update
    if update is None or update.result not in ("reverted", "failed"):
        return None
    return update.target


def _params(sql: DeviceSql, job: CheckinJob) -> dict[str, Any]:
    return report_params(sql, job.device, job.request, job.now)


def _samples(sql: DeviceSql, jobs: Sequence[CheckinJob]) -> list[dict[str, Any]]:
    found = (performance_params(sql, j.device, j.request, j.now) for j in jobs)
    return [p for p in found if p is not None]


def _write_samples(conn: Connection, sql: DeviceSql, rows: list[dict[str, Any]]) -> None:
    if rows:
        driver = conn.connection.driver_connection
        assert driver is not None
        driver.cursor().executemany(sql.performance, rows)


def _write_reports(conn: Connection, sql: DeviceSql, rows: list[dict[str, Any]]) -> None:
    if rows:
        driver = conn.connection.driver_connection
        assert driver is not None
        driver.cursor().executemany(sql.report, rows)


def _settle(outcomes: list[_Outcome]) -> None:
    """Hand every outcome to its event loop: one wake-up per loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0].future.get_loop(), []).append(outcome)
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_resolve, items)
        except RuntimeError:  # the loop closed: nobody waits any more
            log.debug("check-in answers dropped: their event loop is closed")


def _resolve(items: list[_Outcome]) -> None:
    for job, offer, error in items:
        if job.future.done():
            continue  # the client went away
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(offer)
