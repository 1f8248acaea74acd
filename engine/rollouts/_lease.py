"""Leader election for the rollout controller: exactly one acts across replicas, fenced.

PostgreSQL: a session-level ``pg_try_advisory_lock`` on a connection held
while leader; the lock goes away with the connection, so a killed replica
frees it at once. Every controller write runs *on that same connection*
(``LeaderLock.write``): a leader whose session ended (and so lost the lock to
another replica) cannot write at all.

SQLite: a row in ``controller_lease`` with the owner, an expiry on the wall
clock and a generation that each new holder increments; renewed on every
tick; another owner takes it only after it expired. Every controller write
transaction (which holds SQLite's write lock from its start) first checks
that the row still names this owner, its generation and an unexpired lease:
a leader paused past its lease cannot write after another took over.

The wall clock, not the controller's injectable clock: leases are about
processes being alive, and a test clock may stand still.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, insert, select, text, update
from sqlalchemy.exc import SQLAlchemyError

from engine.errors import StoreError
from engine.rollouts.errors import LeaseLostError
from engine.store import Store
from engine.store._connect import durable_write_connection
from engine.store.schema import controller_lease

__all__ = ["LeaderLock"]

_log = logging.getLogger("engine.rollouts.controller")

#: Key of the controller's advisory lock ("rollout" in ASCII).
PG_LOCK_KEY = 0x726F6C6C6F7574
_LEASE = "rollout-controller"


def _wall() -> datetime:
    return datetime.now(UTC)


class LeaderLock:
    """Whether this process is the one rollout controller; ``acquire`` on every tick."""

    def __init__(
        self,
        store: Store,
        owner: str,
        ttl: timedelta,
        wall_clock: Callable[[], datetime] = _wall,
    ) -> None:
        """A lock for ``owner`` (unique per process) on ``store``; not yet acquired."""
        self.store = store
        self.owner = owner
        self.ttl = ttl
        self._wall = wall_clock
        self._pg: Connection | None = None
        self.held = False
        #: the SQLite lease's generation while held (fencing token)
        self.generation: int | None = None

    @property
    def _postgres(self) -> bool:
        return self.store.engine.dialect.name == "postgresql"

    def acquire(self) -> bool:
        """Take or keep the lock; True while this owner is leader. Never raises."""
        was = self.held
        try:
            self.held = self._acquire_pg() if self._postgres else self._acquire_lease()
        except Exception as e:  # SQLAlchemy's, or the store's own errors
            _log.warning("leader lock: %s", e)
            self._drop_pg()
            self.held = False
        if not self.held:
            self.generation = None
        elif not was:
            _log.info("%s leads the rollout controller now", self.owner)
        return self.held

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A durable write transaction that commits only while this owner still leads.

        Raises LeaseLostError (and stops leading) when the lock was lost, and
        StoreError when the store fails.
        """
        if not self.held:
            raise LeaseLostError(f"{self.owner} is not the rollout controller's leader")
        if self._postgres:
            with self._pg_write() as conn:
                yield conn
            return
        try:
            with durable_write_connection(self.store.engine) as conn:
                self._check_lease(conn)
                yield conn
        except SQLAlchemyError as e:
            raise StoreError(f"writing {self.store.display_url} failed: {e}") from e

    def release(self) -> None:
        """Give the lock up (on shutdown) so another replica can lead at once."""
        try:
            if self._postgres:
                if self._pg is not None:
                    with self._pg.begin():
                        self._pg.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": PG_LOCK_KEY})
            elif self.held:
                # Expire it now, keeping the row: generations never repeat.
                with self.store.write() as conn:
                    conn.execute(
                        update(controller_lease)
                        .where(
                            controller_lease.c.name == _LEASE,
                            controller_lease.c.owner == self.owner,
                            controller_lease.c.generation == self.generation,
                        )
                        .values(expires_at=self._wall())
                    )
        except Exception as e:
            _log.warning("releasing the leader lock: %s", e)
        finally:
            self._drop_pg()
            self.held = False
            self.generation = None

    # -- PostgreSQL ----------------------------------------------------------------------

    def _acquire_pg(self) -> bool:
        if self._pg is not None:
            with self._pg.begin():
                self._pg.execute(text("SELECT 1"))  # still connected, so still holding it
            return True
        conn = self.store.engine.connect()
        try:
            with conn.begin():
                got = bool(
                    conn.execute(
                        text("SELECT pg_try_advisory_lock(:k)"), {"k": PG_LOCK_KEY}
                    ).scalar()
                )
        except Exception:
            conn.invalidate()
            conn.close()
            raise
        if got:
            self._pg = conn
        else:
            conn.close()
        return got

    @contextmanager
    def _pg_write(self) -> Iterator[Connection]:
        conn = self._pg
        if conn is None:
            self.held = False
            raise LeaseLostError(f"{self.owner} lost the rollout controller's lock")
        try:
            with conn.begin():
                yield conn
        except SQLAlchemyError as e:
            # The session (and with it the advisory lock) may be gone: lead no more
            # until acquire() proves otherwise.
            self._drop_pg()
            self.held = False
            raise LeaseLostError(
                f"{self.owner}: write on the leader's session failed, leadership dropped: {e}"
            ) from e

    def _drop_pg(self) -> None:
        if self._pg is not None:
            # Never return a connection that may hold the lock to the pool.
            try:
                self._pg.invalidate()
                self._pg.close()
            except Exception as e:
                _log.debug("closing the leader connection: %s", e)
            self._pg = None

    # -- SQLite --------------------------------------------------------------------------

    def _check_lease(self, conn: Connection) -> None:
        row = conn.execute(
            select(
                controller_lease.c.owner,
                controller_lease.c.generation,
                controller_lease.c.expires_at,
            ).where(controller_lease.c.name == _LEASE)
        ).first()
        if (
            row is None
            or row.owner != self.owner
            or row.generation != self.generation
            or row.expires_at <= self._wall()
        ):
            self.held = False
            self.generation = None
            raise LeaseLostError(
                f"{self.owner} lost the rollout controller's lease"
                + ("" if row is None else f" (now {row.owner}, generation {row.generation})")
            )

    def _acquire_lease(self) -> bool:
        now = self._wall()
        with self.store.write() as conn:
            row = conn.execute(
                select(
                    controller_lease.c.owner,
                    controller_lease.c.expires_at,
                    controller_lease.c.generation,
                ).where(controller_lease.c.name == _LEASE)
            ).first()
            if row is None:
                conn.execute(
                    insert(controller_lease).values(
                        name=_LEASE,
                        owner=self.owner,
                        acquired_at=now,
                        expires_at=now + self.ttl,
                        generation=1,
                    )
                )
                self.generation = 1
                return True
            if row.owner == self.owner and row.generation == self.generation:
                conn.execute(
                    update(controller_lease)
                    .where(controller_lease.c.name == _LEASE)
                    .values(expires_at=now + self.ttl)
                )
                return True
            if row.expires_at <= now or row.owner == self.owner:
                if row.owner != self.owner:
                    _log.info("taking over the controller lease from %s (expired)", row.owner)
                generation = int(row.generation) + 1
                conn.execute(
                    update(controller_lease)
                    .where(controller_lease.c.name == _LEASE)
                    .values(
                        owner=self.owner,
                        acquired_at=now,
                        expires_at=now + self.ttl,
                        generation=generation,
                    )
                )
                self.generation = generation
                return True
            return False
