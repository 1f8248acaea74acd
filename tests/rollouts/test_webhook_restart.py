"""Webhook notifications survive a restart of `engine serve` (the store is the outbox)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from engine.rollouts import RolloutController, verify_signature
from engine.store import Store
from engine.store.schema import webhook_deliveries
from fleetbase.clock import utc_now
from tests.harness import wait_until
from tests.rollouts.fleet import (
    SimDevice,
    apply_plan,
    device_waves,
    linux_devices,
    report,
    write_repo,
)
from tests.rollouts.receiver import webhook_receiver
from tests.server.conftest import running_server

SECRET = "restart-secret"


def _failing_canary(root: Path, url: str) -> list[str]:
    """A rollout whose canary devices took the release and reported failure (not judged yet)."""
    devices = linux_devices("box", 10)
    policy = {"waves": [30, 100], "max_parallel": 10, "soak": "0s", "min_success_rate": 0.9,
              "max_failure_rate": 0.2}  # fmt: skip
    group = {"match": {"platform": "linux"}, "agent": {"release": "3.0.2"}, "rollout": policy}
    write_repo(root, devices, {"prod": group})
    with Store.open(url) as store:
        now = utc_now()
        store.upsert_reports([report(d, "3.0.1", now, "committed") for d in devices])
        (recorded,) = apply_plan(root, store, now).rollouts
        waves = device_waves(store, recorded.id)
        controller = RolloutController(store)
        controller.tick()
        controller.close()
        canary = [SimDevice(d, "3.0.1", "committed") for d in sorted(devices) if waves[d] == 0]
        for sim in canary:
            assert sim.checkin(store, utc_now()) is not None
        for sim in canary:
            sim.fail(store, utc_now() + timedelta(seconds=1))
    return [s.name for s in canary]


def _rows(url: str) -> list[tuple[str, str, int]]:
    with Store.open(url) as store, store.read() as conn:
        t = webhook_deliveries
        return [tuple(r) for r in conn.execute(select(t.c.event, t.c.status, t.c.attempts))]


def test_undelivered_webhook_is_sent_after_engine_serve_is_killed_and_restarted(
    tmp_path: Path,
) -> None:
    """A halt's events are stored before sending; while the receiver fails them the server is
    SIGKILLed; the restarted server delivers each once, same delivery id, signed with a fresh
    timestamp."""
    root = tmp_path / "repo"
    url = f"sqlite:///{root / '.engine' / 'state.db'}"
    canary = _failing_canary(root, url)
    args = ["--webhook-url", "", "--log-level", "info"]
    env = {"ENGINE_WEBHOOK_SECRET": SECRET}
    with webhook_receiver() as receiver:
        args[1] = receiver.url
        receiver.statuses = [503] * 1000
        with running_server(root, env=env, args=args) as server:
            wait_until(
                "a first (refused) delivery attempt of every event",
                lambda: (
                    len({d.headers["X-Fleet-Delivery"] for d in receiver.deliveries})
                    == 1 + len(canary)
                ),
                timeout=60,
            )
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait(10)
        stored = _rows(url)
        assert sorted(e for e, _, _ in stored) == sorted(
            ["rollout.halted"] + ["device.failed"] * len(canary)
        )
        assert {s for _, s, _ in stored} == {"pending"}
        first = {d.headers["X-Fleet-Delivery"] for d in receiver.deliveries}
        receiver.statuses = []
        refused = len(receiver.deliveries)
        with running_server(root, env=env, args=args):
            wait_until(
                "every stored event delivered after the restart",
                lambda: {s for _, s, _ in _rows(url)} == {"delivered"},
                timeout=60,
            )
    ok = receiver.deliveries[refused:]
    ok_ids = [d.headers["X-Fleet-Delivery"] for d in ok if d.headers["X-Fleet-Delivery"] in first]
    assert sorted(set(ok_ids)) == sorted(first)
    for d in ok:
        assert verify_signature(SECRET, d.body, d.headers["X-Fleet-Signature"])
        assert json.loads(d.body)["delivery"] == d.headers["X-Fleet-Delivery"]
    halted = [json.loads(d.body) for d in ok if d.headers["X-Fleet-Event"] == "rollout.halted"]
    assert halted and halted[0]["rollout"]["state"] == "halted"
