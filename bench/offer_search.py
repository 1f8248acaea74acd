"""Time the rollout controller's search for devices to offer, on SQLite and PostgreSQL.

Each tick with free ``max_parallel`` slots runs ``offer_candidates`` (the pending online
devices of the open waves, the ones due to check in soonest first) and ``busy_devices``.
This fills a fresh store with N devices' reports (last seen spread over one poll
interval, 5 % offline) and one rollout over all of them in waves 1/10/50/100 %, refreshes
the planner statistics as ``engine apply`` does, and times both reads with the last wave
open at three points: when it opens (half the fleet pending), halfway through it, and
near its end (2.5 % of the fleet pending).

Usage::

    .venv/bin/python -m bench.offer_search [--devices 100000] [--slots 5000]
        [--backend sqlite,postgresql] [--pg HOST:PORT] [--repeat 5]

PostgreSQL runs in a fresh temporary database (user postgres) that is dropped
afterwards; it is skipped with a note when the server cannot be reached. Prints
figures only; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, insert, select, update

from bench._postgres import temporary_database
from engine.rollouts import _reads
from engine.rollouts.model import DeviceState
from engine.store import Store
from engine.store.schema import reports, rollout_devices, rollouts
from inventory.models import RolloutPolicy

POLL = timedelta(seconds=60)
OFFLINE_AFTER = 3 * POLL
WAVES = (1, 10, 50, 100)
CHUNK = 10_000


def _fill(store: Store, n: int, now: datetime) -> int:
    """N reports and one running rollout over them; the rollout's id."""
    rng = random.Random(n)
    sizes = [round(n * p / 100) for p in WAVES]
    wave_of = [next(w for w, top in enumerate(sizes) if i < top) for i in range(n)]
    with store.write() as conn:
        key = conn.execute(
            insert(rollouts).values(
                name="fleet@3.0.1",
                group_name="fleet",
                release="3.0.1",
                priority=0,
                policy=RolloutPolicy().model_dump_json(),
                state="running",
                current_wave=3,
                created_at=now,
                updated_at=now,
            )
        ).inserted_primary_key
    assert key is not None
    rollout_id = int(key[0])
    seen = POLL  # last seen within one poll interval: online, as a fleet polling on time
    for start in range(0, n, CHUNK):
        ids = range(start, min(start + CHUNK, n))
        report_rows = [
            {
                "device": f"dev-{i:07d}",
                "agent_version": "3.0.0",
                "platform": "linux",
                "runtime_version": "0.1.0",
                "last_seen": now
                - (OFFLINE_AFTER * 2 if rng.random() < 0.05 else seen * rng.random()),
                "updated_at": now,
            }
            for i in ids
        ]
        device_rows = [
            {
                "rollout_id": rollout_id,
                "device": f"dev-{i:07d}",
                "wave": wave_of[i],
                "position": rng.random(),
                "platform": "linux",
                "from_version": "3.0.0",
                "state": DeviceState.PENDING.value,
                "attempts": 0,
                "updated_at": now,
            }
            for i in ids
        ]
        with store.write() as conn:
            conn.execute(insert(reports), report_rows)
            conn.execute(insert(rollout_devices), device_rows)
    return rollout_id


def _settle(store: Store, rollout_id: int, *, waves_below: int, n_done_in_last: int) -> int:
    """Waves below ``waves_below`` succeeded, the first ``n_done_in_last`` devices of the
    last wave too; the rest pending. The number of pending devices."""
    rd = rollout_devices
    with store.write() as conn:
        conn.execute(
            update(rd).where(rd.c.rollout_id == rollout_id).values(state=DeviceState.PENDING.value)
        )
        conn.execute(
            update(rd)
            .where(rd.c.rollout_id == rollout_id, rd.c.wave < waves_below)
            .values(state=DeviceState.SUCCEEDED.value)
        )
        last = [
            r.device
            for r in conn.execute(
                rd.select()
                .with_only_columns(rd.c.device)
                .where(rd.c.rollout_id == rollout_id, rd.c.wave == waves_below)
                .order_by(rd.c.position)
                .limit(n_done_in_last)
            )
        ]
        for start in range(0, len(last), CHUNK):
            conn.execute(
                update(rd)
                .where(rd.c.rollout_id == rollout_id, rd.c.device.in_(last[start : start + CHUNK]))
                .values(state=DeviceState.SUCCEEDED.value)
            )
        pending = conn.execute(
            select(func.count()).where(
                rd.c.rollout_id == rollout_id, rd.c.state == DeviceState.PENDING.value
            )
        ).scalar_one()
    store.analyze([reports.name, rollout_devices.name, rollouts.name])
    return int(pending)


def _best(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """(median, best) wall seconds of ``repeat`` calls."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def bench(url: str, n: int, slots: int, repeat: int) -> None:
    """Fill the store at ``url`` and time the controller's reads at three points."""
    now = datetime.now(UTC)
    with Store.open(url) as store:
        kind = store.display_url.split(":")[0].split("+")[0]
        start = time.perf_counter()
        rollout_id = _fill(store, n, now)
        print(f"{kind}: {n} devices filled in {time.perf_counter() - start:.1f} s", flush=True)
        last_size = n - round(n * WAVES[2] / 100)
        points = [
            ("last wave opens", 0),
            ("last wave half done", last_size // 2),
            ("last wave nearly done", last_size - round(n * 0.025)),
        ]
        for label, done in points:
            pending = _settle(store, rollout_id, waves_below=3, n_done_in_last=done)

            def offer() -> object:
                with store.read() as conn:
                    return _reads.offer_candidates(
                        conn, rollout_id, last_wave=3, online_since=now - OFFLINE_AFTER,
                        now=now, limit=slots + 100, overdue_before=now - POLL * 1.5,
                    )  # fmt: skip

            def busy() -> object:
                with store.read() as conn:
                    return _reads.busy_devices(conn, rollout_id)

            found = offer()
            assert isinstance(found, list)
            o_med, o_best = _best(offer, repeat)
            b_med, _ = _best(busy, repeat)
            print(
                f"  {label:<22} {pending:>8} pending  offer search {o_med:7.3f} s "
                f"(best {o_best:.3f}, {len(found)} rows)  busy count {b_med:6.3f} s",
                flush=True,
            )


def main() -> None:
    """Run the benchmark on the chosen backends."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--slots", type=int, default=5_000, help="free max_parallel slots")
    parser.add_argument("--backend", default="sqlite,postgresql")
    parser.add_argument("--pg", default="127.0.0.1:5432", help="PostgreSQL HOST:PORT")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    backends = [b for b in args.backend.split(",") if b]
    if "sqlite" in backends:
        with tempfile.TemporaryDirectory() as tmp:
            bench(f"sqlite:///{Path(tmp) / 'state.db'}", args.devices, args.slots, args.repeat)
    if "postgresql" in backends:
        with temporary_database(args.pg) as url:
            if url is not None:
                bench(url, args.devices, args.slots, args.repeat)


if __name__ == "__main__":
    main()
