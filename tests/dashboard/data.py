"""A store with a halted rollout, a failed device and its step events, written directly.

For the in-process tests of the forensics reads, the operator API and the
dashboard pages (the browser test drives a real rollout instead).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from sqlalchemy import insert

from engine.store import Store
from engine.store.schema import (
    devices,
    events,
    heartbeats,
    performance,
    reports,
    rollout_devices,
    rollouts,
)

NOW = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
XSS = "<script>alert('xss')</script><img src=x onerror=alert(1)>"
FAILED = "berlin-pos-0002"
#: A device id with markup, a slash included.
HOSTILE = "hostile-<img src=x onerror=alert(1)></b>"
CONFIRM_FAILURE = "CONFIRM: heartbeat says 3.0.1, expected 3.0.3 after 20s"


def fill(store: Store, *, healthy: int = 3) -> int:
    """Record one halted rollout of 3.0.3 (a failed device, healthy ones); returns its id."""
    retry_at = NOW - timedelta(minutes=30)
    with store.write() as conn:
        rid = conn.execute(
            insert(rollouts).values(
                name="linux-prod@3.0.3",
                group_name="linux-prod",
                release="3.0.3",
                priority=0,
                policy=json.dumps({"waves": [50, 100], "max_failure_rate": 0.2}),
                state="halted",
                reason="wave 0: 1 of 2 devices failed (50%), above max_failure_rate 20%",
                current_wave=0,
                created_at=NOW - timedelta(hours=1),
                updated_at=NOW - timedelta(minutes=20),
            )
        ).inserted_primary_key
        assert rid is not None
        rollout_id = int(rid[0])
        names = [f"berlin-pos-{i:04d}" for i in range(3, 3 + healthy)]
        for i, device in enumerate([FAILED, HOSTILE, *names]):
            failed = device == FAILED
            conn.execute(
                insert(reports).values(
                    device=device,
                    agent_version="3.0.1" if failed or device == HOSTILE else "3.0.3",
                    platform="linux",
                    last_seen=NOW - timedelta(seconds=30 if i % 2 == 0 else 3600),
                    runtime_version="0.1.0",
                    known_good="3.0.1",
                    last_result="rolled_back" if failed else "committed",
                    updated_at=NOW,
                    tx_target="3.0.3",
                    tx_phase="rolled_back" if failed else "commit",
                    tx_attempts=1,
                    tx_detail=CONFIRM_FAILURE if failed else (XSS if device == HOSTILE else None),
                    agent_running=True,
                )
            )
            conn.execute(
                insert(rollout_devices).values(
                    rollout_id=rollout_id,
                    device=device,
                    wave=0 if i < 2 else 1,
                    position=float(i),
                    platform="linux",
                    from_version="3.0.1",
                    state="failed" if failed else ("pending" if i >= 2 else "succeeded"),
                    attempts=1 if i < 2 else 0,
                    reason=(
                        "attempt 1: the device reported rolled_back; retry at "
                        f"{retry_at:%Y-%m-%dT%H:%M:%SZ}"
                        if failed
                        else None
                    ),
                    retry_at=retry_at if failed else None,
                    started_at=NOW - timedelta(minutes=50) if i < 2 else None,
                    finished_at=NOW - timedelta(minutes=40) if i < 2 else None,
                    updated_at=NOW,
                )
            )
        conn.execute(
            insert(devices).values(
                device=FAILED,
                platform="linux",
                token_hash="0" * 64,
                enrolled_at=NOW - timedelta(days=1),
                enrollments=1,
            )
        )
        conn.execute(
            insert(heartbeats).values(
                device=FAILED, version="3.0.1", at=NOW - timedelta(seconds=20), pid=4242,
                received_at=NOW - timedelta(seconds=19),
            )
        )  # fmt: skip
        steps = [
            ("download", "ok", None),
            ("verify", "ok", None),
            ("backup", "ok", None),
            ("swap", "ok", None),
            ("restart", "ok", None),
            ("confirm", "failed", CONFIRM_FAILURE),
            ("rollback_swap", "ok", None),
            ("rollback_confirm", "ok", "3.0.1 heartbeating again"),
        ]
        for n, (step, status, detail) in enumerate(steps):
            at = NOW - timedelta(minutes=48) + timedelta(seconds=10 * n)
            conn.execute(
                insert(events).values(
                    device=FAILED, target="3.0.3", step=step, status=status, detail=detail,
                    at=at, received_at=at,
                )
            )  # fmt: skip
        for version, rss in (("3.0.1", 30e6), ("3.0.3", 90e6)):
            conn.execute(
                insert(performance).values(
                    device=FAILED, version=version, samples=4, cpu_samples=4, cpu_sum=10.0,
                    rss_sum=4 * rss, rss_last=int(rss), rss_max=int(rss),
                    first_at=NOW - timedelta(hours=2), last_at=NOW - timedelta(minutes=50),
                )
            )  # fmt: skip
        conn.execute(
            insert(events).values(
                device=HOSTILE, target="3.0.3", step="confirm", status="failed", detail=XSS,
                at=NOW - timedelta(minutes=45), received_at=NOW - timedelta(minutes=45),
            )
        )  # fmt: skip
    return rollout_id
