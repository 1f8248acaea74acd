"""Time ``GET /metrics`` of a real `engine serve` whose store holds 100,000 devices.

Usage: .venv/bin/python bench/metrics_scrape.py [--devices 100000] [--scrapes 100] [--pg]

The store gets ``--devices`` reports (five versions, a third of them online)
and one live rollout over all of them (its devices spread over six states), so
that every store gauge of /metrics counts the whole fleet; then `engine serve`
starts on it (without the rollout controller, which would act on the synthetic
rollout) and /metrics is scraped ``--scrapes`` times after a warm-up.
Prints p50, p95 and max. ``--pg`` runs the same on a fresh PostgreSQL database
(user postgres on 127.0.0.1:5432), dropped afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import psycopg
import requests
from psycopg import sql

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:  # run as a script: make the project's packages importable
    sys.path.insert(0, str(_REPO))

from engine.store import Store  # noqa: E402
from engine.store.schema import rollout_devices, rollouts  # noqa: E402
from fleetbase.platform import Platform  # noqa: E402
from fleetbase.version import Version  # noqa: E402
from states.report import Report  # noqa: E402
from tests.harness import DeviceSpec, OperatorRepo, ServerProcess  # noqa: E402

PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=3"
STATES = ("pending", "offered", "in_progress", "succeeded", "failed", "rolled_back")


def fill(url: str, devices: int) -> None:
    """``devices`` reports and one live rollout over all of them."""
    now = datetime.now(UTC)
    versions = [Version(f"3.0.{i}") for i in range(5)]
    platforms = list(Platform)
    with Store.open(url) as store:
        store.upsert_reports(
            Report(
                device=f"dev-{i:06d}",
                agent_version=versions[i % 5],
                platform=platforms[i % 3],
                last_seen=now - timedelta(minutes=0 if i % 3 == 0 else 60),
                runtime_version="0.1.0",
                known_good=versions[0],
                last_result="committed",
            )
            for i in range(devices)
        )
        with store.write() as conn:
            inserted = conn.execute(
                rollouts.insert().values(
                    name="fleet@3.0.4", group_name="fleet", release="3.0.4", priority=0,
                    policy=json.dumps({"waves": [10, 50, 100]}), state="active",
                    current_wave=2, created_at=now, updated_at=now,
                )
            ).inserted_primary_key  # fmt: skip
            assert inserted is not None
            rollout_id = inserted[0]
            rows = [
                {"rollout_id": rollout_id, "device": f"dev-{i:06d}", "wave": i % 3,
                 "position": i / devices, "platform": platforms[i % 3].value,
                 "state": STATES[i % len(STATES)], "attempts": 1, "updated_at": now}
                for i in range(devices)
            ]  # fmt: skip
            for start in range(0, devices, 10_000):
                conn.execute(rollout_devices.insert(), rows[start : start + 10_000])
        # A store in service has been analysed (and, on PostgreSQL, vacuumed: index-only
        # scans need the visibility map) by autovacuum; a freshly filled one has not.
        with store.engine.connect() as plain:
            if plain.dialect.name == "postgresql":
                plain.execution_options(isolation_level="AUTOCOMMIT")
                plain.exec_driver_sql("VACUUM ANALYZE")
            else:
                plain.exec_driver_sql("ANALYZE")
                plain.commit()


def scrape_times(server: ServerProcess, scrapes: int) -> tuple[list[float], float, int]:
    """Seconds per scrape (after 5 warm-up scrapes), the server's CPU seconds per scrape
    (its process only: on a loaded machine the wall time is mostly waiting), body size."""
    headers = {"Authorization": f"Bearer {server.admin_token}"}
    assert server.proc is not None
    serving = psutil.Process(server.proc.pid)
    size = 0
    with requests.Session() as s:
        for _ in range(5):
            s.get(server.url + "/metrics", headers=headers, timeout=30).raise_for_status()
        times = []
        cpu = serving.cpu_times()
        for _ in range(scrapes):
            start = time.perf_counter()
            resp = s.get(server.url + "/metrics", headers=headers, timeout=30)
            times.append(time.perf_counter() - start)
            resp.raise_for_status()
            size = len(resp.content)
        after = serving.cpu_times()
    used = (after.user + after.system - cpu.user - cpu.system) / scrapes
    return times, used, size


def run(label: str, url: str | None, devices: int, scrapes: int, base: Path) -> None:
    """Fill a store, serve it, scrape it; print the figures."""
    repo = OperatorRepo(base / "fleet")
    repo.create([DeviceSpec("dev-000000", "linux")], {})
    state = url or f"sqlite:///{repo.root / '.engine' / 'state.db'}"
    start = time.perf_counter()
    fill(state, devices)
    print(f"{label}: {devices:,} devices stored in {time.perf_counter() - start:.1f} s")
    # No controller: the synthetic rollout must stay as stored while it is scraped.
    server = ServerProcess(
        repo, base / f"server-{label}.log", state=state, args=["--no-controller"]
    )
    server.start(timeout=120)
    try:
        times, cpu, size = scrape_times(server, scrapes)
    finally:
        server.stop()
    ms = sorted(t * 1000 for t in times)
    p95 = ms[min(len(ms) - 1, round(0.95 * len(ms)) - 1)]
    print(
        f"{label}: GET /metrics x{scrapes}: p50 {statistics.median(ms):.1f} ms, "
        f"p95 {p95:.1f} ms, max {ms[-1]:.1f} ms; server CPU {cpu * 1000:.1f} ms per scrape "
        f"({size:,} bytes); load average {os.getloadavg()[0]:.1f}"
    )


@contextmanager
def pg_database() -> Iterator[str | None]:
    """A fresh PostgreSQL database's URL (None when the server cannot be reached)."""
    name = f"bench_metrics_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True)
    except psycopg.OperationalError as e:
        print(f"PostgreSQL: skipped ({e})")
        yield None
        return
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
        finally:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


def main() -> int:
    """Parse options and run the benchmark."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--devices", type=int, default=100_000)
    p.add_argument("--scrapes", type=int, default=100)
    p.add_argument("--pg", action="store_true", help="also on PostgreSQL")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp:
        run("SQLite", None, args.devices, args.scrapes, Path(tmp) / "sqlite")
        if args.pg:
            with pg_database() as url:
                if url is not None:
                    run("PostgreSQL", url, args.devices, args.scrapes, Path(tmp) / "pg")
    return 0


if __name__ == "__main__":
    sys.exit(main())
