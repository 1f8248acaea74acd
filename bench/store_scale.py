"""Time the store with many device reports on SQLite and PostgreSQL; prints figures.

Usage: .venv/bin/python -m bench.store_scale [--devices 100000] [--pg HOST:PORT]

PostgreSQL runs in a fresh temporary database (user postgres) that is dropped
afterwards; it is skipped with a note when the server cannot be reached.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

from bench._postgres import temporary_database
from engine.store import Store
from fleetbase.platform import Platform
from fleetbase.version import Version
from states.report import Report

T = TypeVar("T")


def _timed(label: str, fn: Callable[[], T], repeat: int = 1) -> T:
    best = best_cpu = float("inf")
    result: T | None = None
    for _ in range(repeat):
        result = None  # free the previous result outside the timed region
        start, start_cpu = time.perf_counter(), time.process_time()
        result = fn()
        best = min(best, time.perf_counter() - start)
        best_cpu = min(best_cpu, time.process_time() - start_cpu)
    suffix = f" (best of {repeat})" if repeat > 1 else ""
    print(f"  {label:<24} {best:7.3f} s wall {best_cpu:7.3f} s engine CPU{suffix}")
    assert result is not None
    return result


def _reports(n: int, offset: timedelta) -> list[Report]:
    base = datetime(2026, 11, 27, tzinfo=UTC) + offset
    versions = [Version(f"3.0.{i}") for i in range(5)]
    platforms = list(Platform)
    return [
        Report(
            device=f"dev-{i:06d}",
            agent_version=versions[i % 5],
            platform=platforms[i % 3],
            last_seen=base + timedelta(seconds=i),
            runtime_version="1.0.0",
            known_good=versions[0],
            last_result="committed",
        )
        for i in range(n)
    ]


def bench(url: str, n: int) -> None:
    """Upsert n new reports, upsert n newer ones, then load and digest them."""
    with Store.open(url) as store:
        print(f"{store.display_url.split(':')[0]}: {n} reports")
        first, second = _reports(n, timedelta(0)), _reports(n, timedelta(hours=1))
        _timed("upsert (all new)", lambda: store.import_reports(first))
        _timed("upsert (all updated)", lambda: store.import_reports(second))
        loaded = _timed("load_reports", store.load_reports, repeat=3)
        assert len(loaded) == n
        _timed("reports_digest", store.reports_digest, repeat=3)


def main() -> None:
    """Run the benchmark on both backends."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--pg", default="127.0.0.1:5432", help="PostgreSQL HOST:PORT")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bench(f"sqlite:///{Path(tmp) / 'state.db'}", args.devices)
    with temporary_database(args.pg) as url:
        if url is not None:
            bench(url, args.devices)


if __name__ == "__main__":
    main()
