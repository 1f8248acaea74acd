"""Time the dashboard's pages at 100,000 devices through a real `engine serve`; prints p50/p95.

Usage: .venv/bin/python -m bench.dashboard [--devices 100000] [--requests 40] [--pg HOST:PORT]

The store gets N enrolled devices with reports (five versions, three
platforms, one in seven offline), 1 % more enrolled that never reported,
one rollout over every device (succeeded, failed, pending and in-progress
devices in three waves) and step events for the failed ones; then `engine
serve` runs on 127.0.0.1 and the pages are fetched one after another, logged
in as a browser would be. "first" is the first request of a page (the fleet
page, the rollouts page and a rollout's waves reuse their aggregate reads for
3 s afterwards; the rest is read every time). SQLite by default; with --pg also a fresh
PostgreSQL database (user postgres), dropped afterwards.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import requests
from psycopg import sql
from sqlalchemy import insert

from engine.store import Store
from engine.store.schema import devices, events, rollout_devices, rollouts
from fleetbase.platform import Platform
from fleetbase.version import Version
from states.report import Report
from tests.harness import DeviceSpec, OperatorRepo, ServerProcess

#: Pages timed: label -> path (after logging in).
PAGES = {
    "fleet (/)": "/",
    "device list, page 1": "/devices",
    "device list, page 1000": "/devices?page=1000",
    "device list, version filter": "/devices?version=3.0.2",
    "device list, state=failed": "/devices?state=failed",
    "device list, offline + platform": "/devices?online=no&platform=linux",
    "device list, search": "/devices?q=dev-0999",
    "rollouts": "/rollouts",
    "rollout, failed devices": "/rollouts/1?state=failed",
    "one device": "/devices/dev-000007",
}

_STATES = ("succeeded", "succeeded", "succeeded", "failed", "pending", "in_progress")


def fill(url: str, n: int) -> None:
    """N reports, one rollout over every device, events of the failed ones."""
    now = datetime.now(UTC)
    versions = [Version(f"3.0.{i}") for i in range(5)]
    platforms = list(Platform)
    with Store.open(url) as store:
        store.import_reports(
            Report(
                device=f"dev-{i:06d}",
                agent_version=versions[i % 5],
                platform=platforms[i % 3],
                # online ones stay online through the run (seen "later" than its start)
                last_seen=now + timedelta(hours=-1 if i % 7 == 0 else 1, seconds=-(i % 60)),
                runtime_version="1.0.0",
                known_good=versions[0],
                last_result="committed",
            )
            for i in range(n)
        )
        with store.write() as conn:
            conn.execute(
                insert(devices),
                [
                    {
                        "device": f"dev-{i:06d}",
                        "platform": platforms[i % 3].value,
                        "token_hash": "0" * 64,
                        "enrolled_at": now,
                        "enrollments": 1,
                    }
                    for i in range(n + n // 100)  # 1 % enrolled, never reported
                ],
            )
            conn.execute(
                insert(rollouts).values(
                    name="fleet@3.0.2", group_name="fleet", release="3.0.2", priority=0,
                    policy=json.dumps({"waves": [1, 10, 100]}), state="active",
                    current_wave=2, created_at=now, updated_at=now,
                )
            )  # fmt: skip
            rows = []
            for i in range(n):
                state = _STATES[i % len(_STATES)]
                rows.append(
                    {
                        "rollout_id": 1,
                        "device": f"dev-{i:06d}",
                        "wave": 0 if i < n // 100 else (1 if i < n // 10 else 2),
                        "position": float(i),
                        "platform": platforms[i % 3].value,
                        "from_version": "3.0.1",
                        "state": state,
                        "attempts": 0 if state == "pending" else 1,
                        "reason": "attempt 1: the device reported rolled_back"
                        if state == "failed"
                        else None,
                        "finished_at": now - timedelta(minutes=5) if state == "failed" else None,
                        "updated_at": now,
                    }
                )
            conn.execute(insert(rollout_devices), rows)
            steps = ("download", "verify", "backup", "swap", "restart", "confirm_heartbeat")
            conn.execute(
                insert(events),
                [
                    {
                        "device": f"dev-{i:06d}",
                        "target": "3.0.2",
                        "step": step,
                        "status": "failed" if step == "confirm_heartbeat" else "ok",
                        "detail": "heartbeat says 3.0.1, expected 3.0.2"
                        if step == steps[-1]
                        else None,
                        "at": now,
                        "received_at": now,
                    }
                    for i in range(3, n, len(_STATES))
                    for step in steps
                ],
            )


def measure(url: str, n: int, count: int, base: Path) -> None:
    """Fill the store at ``url``, serve it, and print p50/p95 of each page."""
    start = time.perf_counter()
    fill(url, n)
    backend = url.split(":", maxsplit=1)[0]
    print(f"{backend}: {n} devices filled in {time.perf_counter() - start:.1f} s")
    repo = OperatorRepo(base / "fleet")
    repo.create([DeviceSpec("dev-000000", "linux")], {})
    # online: seen within 3 poll intervals of 60 s, as in a real fleet
    server = ServerProcess(repo, base / "server.log", state=url, args=["--poll-interval", "60"])
    server.start(timeout=120)
    try:
        session = requests.Session()
        login = session.post(
            server.url + "/login", data={"token": server.admin_token}, allow_redirects=False
        )
        assert login.status_code == 303, login.text
        print(f"  {'page':<34} {'first':>8} {'p50':>8} {'p95':>8}  (ms, {count} requests each)")
        for label, path in PAGES.items():
            times = []
            for _ in range(count):
                t0 = time.perf_counter()
                r = session.get(server.url + path, timeout=60)
                times.append((time.perf_counter() - t0) * 1000)
                assert r.status_code == 200, (path, r.status_code, r.text[:300])
            first = times[0]
            times.sort()
            p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
            print(f"  {label:<34} {first:8.1f} {statistics.median(times):8.1f} {p95:8.1f}")
    finally:
        server.stop()


def main() -> None:
    """Run the benchmark on SQLite, and on PostgreSQL when --pg is given."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--pg", help="PostgreSQL HOST:PORT (user postgres, trust)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        measure(f"sqlite:///{Path(tmp) / 'state.db'}", args.devices, args.requests, Path(tmp))
    if not args.pg:
        return
    host, _, port = args.pg.partition(":")
    admin = f"host={host} port={port or 5432} user=postgres dbname=postgres connect_timeout=3"
    name = f"engine_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            url = f"postgresql://postgres@{host}:{port or 5432}/{name}"
            measure(url, args.devices, args.requests, Path(tmp))
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


if __name__ == "__main__":
    main()
