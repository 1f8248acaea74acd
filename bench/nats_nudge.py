"""NATS nudge benchmark: how long offered devices wait before they start, with and without.

Runs the same rollout twice against a real `engine serve` and real runtimes
(``tests/harness`` fleets): ``--devices`` devices on 3.0.0 with a long poll
interval (``--poll``), then 3.0.1 in waves [50, 100]; once with NATS off
(devices find their offer at their next poll) and once with NATS on (the
controller nudges each device it offers; the runtime checks in after a random
share of ``nudge_spread``). From the server's store: per device, the delay
from the offer (``offered_at``) to taking the plan (``started_at``), and the
time from `engine apply` to the rollout's completion.

Usage::

    python bench/nats_nudge.py [--devices 8] [--poll 30s] [--nats nats://127.0.0.1:4222]

Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from sqlalchemy import select  # noqa: E402

from engine.store import Store  # noqa: E402
from engine.store.schema import rollout_devices, rollouts  # noqa: E402
from tests.harness import DeviceSpec, Fleet  # noqa: E402


def _groups() -> dict[str, Any]:
    policy = {"waves": [50, 100], "max_parallel": 100, "soak": "1s", "min_success_rate": 1.0,
              "max_failure_rate": 0.0}  # fmt: skip
    return {"fleet": {"match": {"site": "demo"}, "agent": {"release": "3.0.0"}, "rollout": policy}}


def _bus_settings(url: str, prefix: str) -> dict[str, Any]:
    return {
        "url": url,
        "nudge_subject": f"{prefix}.nudge.{{device}}",
        "heartbeat_subject": f"{prefix}.heartbeat.{{device}}",
        "stream": prefix.upper(),
        "nudge_spread": "1s",
    }


def run(base: Path, devices: int, poll: str, nats_url: str | None) -> dict[str, float]:
    """One rollout of 3.0.1; the figures."""
    prefix = f"b{uuid.uuid4().hex[:8]}"
    bus = _bus_settings(nats_url, prefix) if nats_url else None
    specs = [DeviceSpec(f"dev-{i:03d}", "linux") for i in range(devices)]
    fleet = Fleet(base, specs, _groups(), poll_interval=poll,
                  engine_settings={"nats": bus} if bus else None)  # fmt: skip
    try:
        fleet.setup("3.0.0")
        if bus is not None:
            device_bus = {k: bus[k] for k in ("url", "nudge_subject", "heartbeat_subject")}
            for d in fleet.devices.values():
                cfg = yaml.safe_load(d.config_path.read_text())
                cfg["server"]["nats"] = device_bus
                d.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        fleet.start()
        fleet.wait_reported("3.0.0", timeout=300)
        time.sleep(2)  # every runtime past its first check-in: now in its long wait
        fleet.repo.set_release("3.0.1")
        start = time.monotonic()
        fleet.repo.engine("apply", "--yes", "--wait", timeout=1800)
        total = time.monotonic() - start
        url = f"sqlite:///{fleet.repo.root / '.engine' / 'state.db'}"
        with Store.open(url, migrate=False) as store, store.read() as conn:
            rid = conn.execute(select(rollouts.c.id).where(rollouts.c.release == "3.0.1")).scalar()
            rows = conn.execute(
                select(rollout_devices.c.offered_at, rollout_devices.c.started_at).where(
                    rollout_devices.c.rollout_id == rid
                )
            ).all()
        waits = sorted((s - o).total_seconds() for o, s in rows if o is not None and s is not None)
        return {
            "apply_to_completed_s": total,
            "offer_to_start_p50_s": statistics.median(waits),
            "offer_to_start_p95_s": waits[max(0, int(len(waits) * 0.95) - 1)],
            "offer_to_start_max_s": waits[-1],
            "devices_measured": len(waits),
        }
    finally:
        fleet.stop()


def main(argv: list[str] | None = None) -> int:
    """Run both rollouts and print the figures side by side."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=8)
    p.add_argument("--poll", default="30s", help="the server's poll interval")
    p.add_argument("--nats", default="nats://127.0.0.1:4222")
    args = p.parse_args(argv)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="nats-nudge-") as tmp:
        results["polling only"] = run(Path(tmp) / "poll", args.devices, args.poll, None)
        results["NATS nudges"] = run(Path(tmp) / "nats", args.devices, args.poll, args.nats)
    print(f"{args.devices} devices, poll interval {args.poll}, waves [50, 100]")
    keys = list(next(iter(results.values())))
    print(f"{'':24}" + "".join(f"{name:>16}" for name in results))
    for k in keys:
        print(f"{k:24}" + "".join(f"{r[k]:>16.2f}" for r in results.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
