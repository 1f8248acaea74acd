"""Plans of groups that follow a channel: the resolved release and why, pins, saved plans."""

from __future__ import annotations

import json
import re
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

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
    # Each rollout keeps the channel its group follows: engine status shows it.
    assert main(["status", "-C", str(repo), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert sorted((r["group"], r["channel"]) for r in shown["rollouts"]) == [
        ("early", "beta"),
        ("prod", "stable"),
    ]
    assert main(["status", "-C", str(repo)]) == 0
    text = " ".join(capsys.readouterr().out.split())  # titles wrap in a narrow terminal
    assert "prod@3.0.0 (channel stable) active" in text, text


def test_release_list_shows_channels(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The CHANNEL column, and the groups whose channel resolved to each release."""
    capsys.readouterr()
    assert main(["release", "list", "-C", str(repo), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(r["version"], r["channel"], r["groups"], r["pinned"]) for r in doc["releases"]] == [
        ("3.0.1", "beta", ["early"], 1),
        ("3.0.0", "stable", ["prod"], 0),
    ]


# -- expired manifests ---------------------------------------------------------------------


def _expire(root: Path, version: str, when: datetime) -> None:
    """Give releases/VERSION.yaml the expiry ``when`` and sign it, with the real commands."""
    manifest = root / "releases" / f"{version}.yaml"
    text = re.sub(
        r"(?m)^expires: .*$", f"expires: '{when:%Y-%m-%dT%H:%M:%SZ}'", manifest.read_text()
    )
    manifest.write_text(text)
    key = root / "keys" / "release-signing.key"
    if not key.exists():
        assert main(["keygen", "--out", str(key.parent)]) == 0
    assert main(["release", "sign", str(manifest), "--key", str(key)]) == 0


def test_an_expired_release_is_skipped_and_the_plan_says_so(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """3.0.1, the newest on beta, has a signed manifest that expired: the beta group resolves
    to 3.0.0 (stable) and every place that explains the resolution names what was skipped."""
    when = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    _expire(repo, "3.0.1", when)
    stamp = f"{when:%Y-%m-%dT%H:%M:%SZ}"
    plan = _plan(repo, capsys)
    early = next(d for d in plan.devices if d.device == "srv-0000")
    assert (early.action, early.desired, early.channel) == (Action.NOOP, Version("3.0.0"), "beta")
    rollouts = {r.id: r for r in plan.rollouts}
    assert "early@3.0.1" not in rollouts
    assert rollouts["early@3.0.0"].resolution == (
        "channel beta -> 3.0.0 (newest on beta or more stable; 3.0.0 is on stable; "
        f"skipped 3.0.1 (manifest expired {stamp}))"
    )
    assert main(["plan", "-C", str(repo)]) == 0
    assert f"skipped 3.0.1 (manifest expired {stamp})" in capsys.readouterr().out
    # nothing to apply: the beta group is where its channel resolves (the pinned device is
    # never moved by apply)
    assert main(["apply", "-C", str(repo), "--yes"]) == 0
    assert "Nothing to apply" in capsys.readouterr().out
    url = load_engine_settings(repo).state
    assert url is not None
    with Store.open(url) as store, store.read() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM rollouts").scalar_one() == 0


def test_a_channel_whose_releases_all_expired_fails_validate_naming_the_files(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No unexpired release on stable (or beta): validate exits 1 at each group's
    agent.channel, naming each expired manifest; plan refuses the same way."""
    when = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    stamp = f"{when:%Y-%m-%dT%H:%M:%SZ}"
    for version in ("3.0.0", "3.0.1"):
        _expire(repo, version, when)
    capsys.readouterr()
    assert main(["validate", "-C", str(repo)]) == 1
    err = capsys.readouterr().err
    assert (
        "groups.prod.agent.channel: every release on channel 'stable' or a more stable one "
        f"has an expired manifest, which devices refuse: 3.0.0 (releases/3.0.0.yaml expired "
        f"{stamp})"
    ) in err, err
    assert (
        "groups.early.agent.channel: every release on channel 'beta' or a more stable one has "
        f"an expired manifest, which devices refuse: 3.0.1 (releases/3.0.1.yaml expired {stamp}), "
        f"3.0.0 (releases/3.0.0.yaml expired {stamp})"
    ) in err, err
    assert main(["plan", "-C", str(repo)]) == 1
    assert "every release on channel 'beta'" in capsys.readouterr().err


def test_a_release_pinned_by_a_group_that_expired_is_a_validate_warning(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A group naming an expired release loads (its devices may run it already) with a
    warning at its agent.release; apply refuses to move devices to it."""
    path = repo / "inventory" / "fleet.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["groups"]["prod"]["agent"] = {"release": "3.0.1"}
    path.write_text(yaml.safe_dump(doc, sort_keys=True))
    when = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    _expire(repo, "3.0.1", when)
    capsys.readouterr()
    assert main(["validate", "-C", str(repo)]) == 0
    err = capsys.readouterr().err
    assert re.search(
        r"warning: inventory/fleet\.yaml:\d+:\d+: groups\.prod\.agent\.release: the manifest of "
        rf"release 3\.0\.1 \(releases/3\.0\.1\.yaml\) expired at {when:%Y-%m-%dT%H:%M:%SZ}: "
        r"devices refuse to install it",
        err,
    ), err
    assert main(["apply", "-C", str(repo), "--yes", "--allow-unsigned"]) == 1
    assert "devices refuse expired manifests; nothing applied" in capsys.readouterr().err


def test_a_saved_plan_whose_release_expired_since_is_refused(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The plan resolved beta to 3.0.1 while its signed manifest was valid; it expired before
    apply. The files are unchanged, but the channel now resolves elsewhere: apply refuses the
    plan as stale, saying why; nothing is recorded. A fresh plan skips 3.0.1."""
    margin = 10.0  # seconds for `engine plan` to run before the manifest expires
    when = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=margin + 1)
    _expire(repo, "3.0.1", when)
    stamp = f"{when:%Y-%m-%dT%H:%M:%SZ}"
    saved = repo / "plan.json"
    assert main(["plan", "-C", str(repo), "--out", str(saved)]) == 0
    assert datetime.now(UTC) < when, "planning took longer than the margin: raise it"
    assert "early@3.0.1" in {r["id"] for r in json.loads(saved.read_text())["rollouts"]}
    time.sleep(max(0.0, (when - datetime.now(UTC)).total_seconds()) + 0.5)
    capsys.readouterr()
    assert main(["apply", str(saved), "--yes", "--allow-unsigned"]) == 1
    err = capsys.readouterr().err
    assert "no longer matches the desired state; nothing applied" in err, err
    assert (
        "group early's channel beta resolved to 3.0.1 when the plan was made; now channel beta "
        "-> 3.0.0 (newest on beta or more stable; 3.0.0 is on stable; skipped 3.0.1 (manifest "
        f"expired {stamp}))"
    ) in err, err
    url = load_engine_settings(repo).state
    assert url is not None
    with Store.open(url) as store, store.read() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM rollouts").scalar_one() == 0
    fresh = _plan(repo, capsys)
    assert {r.id for r in fresh.rollouts if r.group == "early"} == {"early@3.0.0"}
