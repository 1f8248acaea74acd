"""Leader election for the rollout controller: exactly one acts across replicas.

PostgreSQL: a session-level ``pg_try_advisory_lock`` on a connection held
while leader; the lock goes away with the connection, so a killed replica
frees it at once. SQLite: a row in ``controller_lease`` with the owner and an
expiry on the wall clock, renewed on every tick; another owner takes it only
after it expired. The wall clock, not the controller's injectable clock:
leases are about processes being alive, and a test clock may stand still.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, delete, insert, select, text, update
from sqlalchemy.exc import SQLAlchemyError

from engine.store import Store
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

    @property
    def _postgres(self) -> bool:
        return self.store.engine.dialect.name == "postgresql"

    def acquire(self) -> bool:
        """Take or keep the lock; True while this owner is leader. Never raises."""
        try:
            self.held = self._acquire_pg() if self._postgres else self._acquire_lease()
        except SQLAlchemyError as e:
            _log.warning("leader lock: %s", e)
            self._drop_pg()
            self.held = False
        except Exception as e:  # the store may raise its own errors
            _log.warning("leader lock: %s", e)
            self._drop_pg()
            self.held = False
        return self.held

    def release(self) -> None:
        """Give the lock up (on shutdown) so another replica can lead at once."""
        try:
            if self._postgres:
                if self._pg is not None:
                    self._pg.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": PG_LOCK_KEY})
            elif self.held:
                with self.store.write() as conn:
                    conn.execute(
                        delete(controller_lease).where(
                            controller_lease.c.name == _LEASE,
                            controller_lease.c.owner == self.owner,
                        )
                    )
        except Exception as e:
            _log.warning("releasing the leader lock: %s", e)
        finally:
            self._drop_pg()
            self.held = False

    def _acquire_pg(self) -> bool:
        if self._pg is not None:
            self._pg.execute(text("SELECT 1"))  # still connected, so still holding it
            return True
        conn = self.store.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            got = bool(
                conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": PG_LOCK_KEY}).scalar()
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

    def _drop_pg(self) -> None:
        if self._pg is not None:
            # Never return a connection that may hold the lock to the pool.
            try:
                self._pg.invalidate()
                self._pg.close()
            except Exception as e:
                _log.debug("closing the leader connection: %s", e)
            self._pg = None

    def _acquire_lease(self) -> bool:
        now = self._wall()
        with self.store.write() as conn:
            row = conn.execute(
                select(controller_lease.c.owner, controller_lease.c.expires_at).where(
                    controller_lease.c.name == _LEASE
                )
            ).first()
            if row is None:
                conn.execute(
                    insert(controller_lease).values(
                        name=_LEASE, owner=self.owner, acquired_at=now, expires_at=now + self.ttl
                    )
                )
                return True
            if row.owner == self.owner:
                conn.execute(
                    update(controller_lease)
                    .where(controller_lease.c.name == _LEASE)
                    .values(expires_at=now + self.ttl)
                )
                return True
            if row.expires_at <= now:
                _log.info("taking over the controller lease from %s (expired)", row.owner)
                conn.execute(
                    update(controller_lease)
                    .where(controller_lease.c.name == _LEASE)
                    .values(owner=self.owner, acquired_at=now, expires_at=now + self.ttl)
                )
                return True
            return False
