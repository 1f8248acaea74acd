"""Plans of groups that follow a channel: the resolved release and why, pins, saved plans."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from engine.cli import main
from engine.store import Store
from fleetbase.version import Version
from inventory.loader import load_engine_settings
from states.plan import Action, Plan
from states.report import Report
from tests.rollouts.fleet import EXAMPLE_RELEASES, linux_devices, write_repo

CHANNELS = 'releases:\n  "3.0.0": stable\n  "3.0.1": beta\n'


def _report(device: str, version: str) -> Report:
    return Report(
        device=device,
        agent_version=Version(version),
        platform="linux",  # type: ignore[arg-type]
        last_seen=datetime.now(UTC),
        last_result="committed",
        runtime_version="0.1.0",
    )


@pytest.fixture
def repo(tmp_path: Path, store_url: str) -> Path:
    """srv-0000..1 follow beta, srv-0002..4 stable (srv-0004 pinned to 3.0.1); all on 3.0.0;
    the store is SQLite or PostgreSQL (engine.yaml state)."""
    devices = linux_devices("srv", 5)
    devices["srv-0004"]["pin"] = "3.0.1"
    groups: dict[str, dict[str, Any]] = {
        "early": {
            "members": ["srv-0000", "srv-0001"],
            "priority": 1,
            "agent": {"channel": "beta"},
        },
        "prod": {"match": {"platform": "linux"}, "agent": {"channel": "stable"}},
    }
    root = write_repo(tmp_path / "repo", devices, groups, versions=("3.0.0", "3.0.1"))
    (root / "channels.yaml").write_text(CHANNELS)
    with (root / "engine.yaml").open("a") as f:
        f.write(f"state: {store_url}\n")
    with Store.open(store_url) as store:
        store.upsert_reports([_report(f"srv-{i:04d}", "3.0.0") for i in range(5)])
    return root


def _plan(root: Path, capsys: pytest.CaptureFixture[str], *args: str) -> Plan:
    capsys.readouterr()
    assert main(["plan", "-C", str(root), "--json", *args]) == 0
    return Plan.model_validate_json(capsys.readouterr().out)


def test_plan_shows_the_resolved_release_and_why(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The beta group moves to 3.0.1, the stable group stays on 3.0.0, the pin is kept; each
    device plan and rollout names the channel, the text output explains the resolution."""
    plan = _plan(repo, capsys)
    by_device = {d.device: d for d in plan.devices}
    early = by_device["srv-0000"]
    assert (early.action, early.desired, early.channel) == (Action.UPDATE, Version("3.0.1"), "beta")
    assert early.reason == (
        "3.0.0 -> 3.0.1 (group early, channel beta: newest on beta or more stable)"
    )
    prod = by_device["srv-0002"]
    assert (prod.action, prod.desired, prod.channel) == (Action.NOOP, Version("3.0.0"), "stable")
    pinned = by_device["srv-0004"]
    assert (pinned.desired, pinned.channel) == (Version("3.0.1"), None)
    assert pinned.reason == "3.0.0 -> 3.0.1 (pin 3.0.1)"
    rollouts = {r.id: r for r in plan.rollouts}
    assert rollouts["early@3.0.1"].channel == "beta"
    assert rollouts["early@3.0.1"].resolution == (
        "channel beta -> 3.0.1 (newest on beta or more stable)"
    )
    assert rollouts["prod@3.0.0"].resolution == "channel stable -> 3.0.0 (newest on stable)"
    assert rollouts["prod@3.0.1"].channel is None  # the pinned device's own rollout

    assert main(["plan", "-C", str(repo)]) == 0
    out = capsys.readouterr().out
    assert "early@3.0.1  (waves" in out
    assert "\n  channel beta -> 3.0.1 (newest on beta or more stable)\n" in out


def test_old_plans_without_channel_fields_still_read() -> None:
    """channel and resolution are optional: a plan of an older engine parses."""
    plan = Plan.model_validate(
        {
            "generated_at": "2026-12-01T00:00:00Z",
            "inventory": {"root": "/r", "digest": "d"},
            "state": {"url": "", "reports": 0, "reports_digest": ""},
            "summary": {},
            "devices": [
                {"device": "a", "group": "g", "platform": "linux", "current": None,
                 "desired": "3.0.0", "action": "install"}
            ],
            "rollouts": [
                {"id": "g@3.0.0", "group": "g", "release": "3.0.0", "policy": {}, "waves": []}
            ],
        }
    )  # fmt: skip
    assert plan.devices[0].channel is None and plan.rollouts[0].resolution is None


def test_a_saved_plan_stays_bound_to_what_it_resolved(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A release appearing on the channel after `plan --out` stales the saved plan: apply
    refuses it, naming the files; nothing is recorded. A fresh plan then resolves anew."""
    saved = repo / "plan.json"
    assert main(["plan", "-C", str(repo), "--out", str(saved)]) == 0
    resolved = {r["id"] for r in json.loads(saved.read_text())["rollouts"]}
    assert "early@3.0.1" in resolved
    shutil.copy(EXAMPLE_RELEASES / "3.0.4.yaml", repo / "releases" / "3.0.4.yaml")
    capsys.readouterr()
    assert main(["release", "promote", "3.0.4", "beta", "-C", str(repo)]) == 0
    capsys.readouterr()
    assert main(["apply", str(saved), "--yes", "--allow-unsigned"]) == 1
    err = capsys.readouterr().err
    assert (
        "the operator repo changed since the plan was made: channels.yaml changed, "
        "releases/3.0.4.yaml was added"
    ) in err
    url = load_engine_settings(repo).state
    assert url is not None
    with Store.open(url) as store, store.read() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM rollouts").scalar_one() == 0
    fresh = _plan(repo, capsys)
    assert {r.id for r in fresh.rollouts} >= {"early@3.0.4", "prod@3.0.0"}


def test_a_saved_plan_applies_the_resolved_release(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Unchanged inputs: apply records exactly the rollouts the plan resolved."""
    saved = repo / "plan.json"
    assert main(["plan", "-C", str(repo), "--out", str(saved)]) == 0
    capsys.readouterr()
    assert main(["apply", str(saved), "--yes", "--allow-unsigned", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert sorted((r["group"], r["release"]) for r in doc["rollouts"]) == [
        ("early", "3.0.1"),
        ("prod", "3.0.0"),
    ]


def test_release_list_shows_channels(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The CHANNEL column, and the groups whose channel resolved to each release."""
    capsys.readouterr()
    assert main(["release", "list", "-C", str(repo), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(r["version"], r["channel"], r["groups"], r["pinned"]) for r in doc["releases"]] == [
        ("3.0.1", "beta", ["early"], 1),
        ("3.0.0", "stable", ["prod"], 0),
    ]
