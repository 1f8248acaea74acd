"""Managed config files and feature flags end to end: real `engine serve`, real runtimes, agents.

A config-only change rolls out in two waves (the agents restart with the new
files); a config that stops the agent's heartbeat is rolled back by the
runtime with the previous files restored byte for byte and the rollout halts;
a secret value reaches the devices but never a plan, the store or an event;
a flag the release does not declare is refused at validate with its file and
line; flipping a flag rolls out in waves like a release; a changed secret
reconfigures, under a digest keyed by the secrets file's digest_key.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml

from states.config_bundle import config_digest
from tests.e2e.conftest import MakeFleet, StoreView, fleet_group, seconds, specs
from tests.harness import Fleet, wait_until

pytestmark = pytest.mark.slow

SECRET = "s3cr3t-api-key-0f9e8d7c"
DIGEST_KEY = "4b1d9c0e7f3a52e8a6c1d0b9f8e7d6c5b4a39281706f5e4d3c2b1a0f9e8d7c6b"
SOAK = "1s"
TEMPLATE = (
    "{\n"
    '  "site": {{ vars.site_name | tojson }},\n'
    '  "api_key": {{ secrets.api_key | tojson }},\n'
    '  "heartbeat": {{ vars.heartbeat | default(true) | tojson }},\n'
    '  "verbose": {{ flags.verbose | tojson }}\n'
    "}\n"
)


def _declare_config(fleet: Fleet) -> None:
    """Release 3.0.1 declares agent.json (with a secret) and the flag ``verbose``; re-signed."""
    root = fleet.repo.root
    (root / "templates").mkdir(exist_ok=True)
    (root / "templates" / "agent.json.j2").write_text(TEMPLATE)
    secrets = root / "secrets.yaml"
    secrets.write_text(yaml.safe_dump({"digest_key": DIGEST_KEY, "api_key": SECRET}))
    os.chmod(secrets, 0o600)
    manifest = root / "releases" / "3.0.1.yaml"
    doc = yaml.safe_load(manifest.read_text())
    doc["config"] = [
        {"path": "agent.json", "template": "templates/agent.json.j2", "mode": "0640",
         "secrets": ["api_key"]}
    ]  # fmt: skip
    doc["flags"] = {"verbose": {"type": "bool", "default": False, "since": "3.0.1"}}
    manifest.write_text(yaml.safe_dump(doc, sort_keys=False))
    fleet.repo.engine("release", "sign", str(manifest), "--key", str(fleet.repo.key))


def _set_group(fleet: Fleet, **keys: Any) -> None:
    doc = yaml.safe_load(fleet.repo.inventory.read_text())
    doc["groups"]["fleet"].update(keys)
    fleet.repo.inventory.write_text(yaml.safe_dump(doc, sort_keys=False))


def _config_dir(fleet: Fleet, device: str) -> Path:
    return fleet.device(device).state_dir / "agent-config"


def _apply(fleet: Fleet) -> tuple[int, str]:
    done = fleet.repo.engine("apply", "--yes", "--wait", check=False, timeout=300)
    return done.returncode, done.stdout + done.stderr


def _config_rollout(view: StoreView, fleet: Fleet) -> Any:
    status = json.loads(fleet.repo.engine("status", "--json").stdout)
    names = [r["name"] for r in status["rollouts"] if r["name"].startswith("fleet@3.0.1+cfg")]
    assert names, status
    return view.rollout(names[-1])


def _two_waves(view: StoreView, rollout: Any) -> list[Any]:
    rows = view.devices(rollout.id)
    assert {r.state for r in rows} == {"succeeded"}, [(r.device, r.state, r.reason) for r in rows]
    assert all(r.attempts == 1 for r in rows)
    by_wave: dict[int, list[Any]] = {}
    for r in rows:
        by_wave.setdefault(r.wave, []).append(r)
    assert sorted(by_wave) == [0, 1]
    done = max(r.finished_at for r in by_wave[0])
    assert min(r.offered_at for r in by_wave[1]) >= done + seconds(SOAK)
    return rows


def _stored_bytes(fleet: Fleet, state: str | None) -> bytes:
    """Everything the store holds: the SQLite file, or a PostgreSQL data dump."""
    if state is None:
        return (fleet.repo.root / ".engine" / "state.db").read_bytes()
    dsn = state.replace("postgresql+psycopg://", "postgresql://")
    dump = subprocess.run(
        ["pg_dump", "--data-only", dsn], capture_output=True, check=True, timeout=60
    )
    assert b"rollout_devices" in dump.stdout
    return dump.stdout


@pytest.mark.parametrize(
    "store", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_config_and_flags_roll_out_in_waves_and_a_bad_config_is_rolled_back(
    make_fleet: MakeFleet, request: pytest.FixtureRequest, store: str
) -> None:
    """The whole life of a managed config file and a feature flag on four devices."""
    state: str | None = request.getfixturevalue("postgres_url") if store == "postgresql" else None
    group = fleet_group("3.0.1", waves=[50, 100], max_parallel=2, soak=SOAK)
    group["fleet"]["vars"] = {"site_name": "demo"}
    settings: dict[str, Any] = {"secrets_file": "secrets.yaml"}
    if state is not None:
        settings["state"] = state  # engine apply, plan and status use it too
    fleet = make_fleet(specs(4), group, state=state, engine_settings=settings)
    fleet.setup("3.0.1")
    fleet.start()
    fleet.wait_reported("3.0.1")
    view = StoreView(fleet)
    _declare_config(fleet)

    # -- a config-only change: reconfigure in two waves, agents restarted ---------------------
    plan = fleet.repo.engine("plan")
    assert "reconfigure" in plan.stdout and SECRET not in plan.stdout + plan.stderr
    before = {i: d.agent_pid() for i, d in fleet.devices.items()}
    code, out = _apply(fleet)
    assert code == 0, out
    rollout = _config_rollout(view, fleet)
    assert rollout.state == "completed"
    rows = _two_waves(view, rollout)
    expected = {
        "site": "demo", "api_key": SECRET, "heartbeat": True, "verbose": False,
    }  # fmt: skip
    for r in rows:
        d = fleet.device(r.device)
        agent_json = _config_dir(fleet, r.device) / "agent.json"
        assert json.loads(agent_json.read_text()) == expected
        assert agent_json.stat().st_mode & 0o777 == 0o640
        flags = json.loads((_config_dir(fleet, r.device) / "flags.json").read_text())
        assert flags == {"verbose": False}
        assert d.state()["config_digest"] == r.config_digest
        assert d.agent_pid() != before[r.device]
        wait_until(f"{r.device} heartbeats 3.0.1", partial(d.heartbeating, "3.0.1"), timeout=20)

    # -- plans, the store and events never hold the secret --------------------------------------
    saved = fleet.repo.root / "plan.json"
    fleet.repo.engine("plan", "--out", str(saved))
    shown = fleet.repo.engine("plan", "--json", "--diff")
    assert SECRET not in saved.read_text() and SECRET not in shown.stdout + shown.stderr
    assert SECRET.encode() not in _stored_bytes(fleet, state)
    assert all(SECRET not in json.dumps([str(v) for v in e]) for e in view.events())
    assert SECRET not in fleet.server.log.read_text(errors="replace")

    # -- a config that stops the heartbeat: rolled back byte for byte, the rollout halts --------
    good = {i: (_config_dir(fleet, i) / "agent.json").read_bytes() for i in fleet.devices}
    good_digest = {i: d.state()["config_digest"] for i, d in fleet.devices.items()}
    _set_group(fleet, vars={"site_name": "demo", "heartbeat": False})
    code, out = _apply(fleet)
    assert code == 1, out
    broken = _config_rollout(view, fleet)
    assert broken.id != rollout.id and broken.state == "halted", out
    tried = {r.device for r in view.devices(broken.id) if r.attempts > 0}
    assert tried and all(r.wave == 0 for r in view.devices(broken.id) if r.device in tried)
    for i, d in fleet.devices.items():
        wait_until(f"{i} to run its good config", partial(d.heartbeating, "3.0.1"), timeout=30)
        assert (_config_dir(fleet, i) / "agent.json").read_bytes() == good[i]
        assert d.state()["config_digest"] == good_digest[i]
    for i in tried:
        log = fleet.device(i).log_text()
        assert "config files restored" in log, log[-3000:]

    # -- an unknown flag is refused at validate, with its file and line --------------------------
    _set_group(fleet, vars={"site_name": "demo"}, flags={"verbos": True})
    refused = fleet.repo.engine("validate", check=False)
    assert refused.returncode != 0
    lines = fleet.repo.inventory.read_text().splitlines()
    line = next(n for n, text in enumerate(lines, 1) if "verbos:" in text)
    assert f"inventory/fleet.yaml:{line}" in refused.stdout + refused.stderr, refused
    assert "unknown to release 3.0.1" in refused.stdout + refused.stderr

    # -- flipping a flag rolls out in waves like a release ----------------------------------------
    _set_group(fleet, vars={"site_name": "demo"}, flags={"verbose": True})
    code, out = _apply(fleet)
    assert code == 0, out
    flipped = _config_rollout(view, fleet)
    assert flipped.state == "completed" and flipped.id != broken.id
    for r in _two_waves(view, flipped):
        cfg = _config_dir(fleet, r.device)
        assert json.loads((cfg / "flags.json").read_text()) == {"verbose": True}
        assert json.loads((cfg / "agent.json").read_text())["verbose"] is True

    # -- a changed secret reconfigures (the digest is keyed, and still names the secret) ------
    rotated = SECRET + "-rotated"
    (fleet.repo.root / "secrets.yaml").write_text(
        yaml.safe_dump({"digest_key": DIGEST_KEY, "api_key": rotated})
    )
    plan = json.loads(fleet.repo.engine("plan", "--json").stdout)
    assert {d["action"] for d in plan["devices"]} == {"reconfigure"}, plan["devices"]
    assert rotated not in json.dumps(plan)
    code, out = _apply(fleet)
    assert code == 0, out
    secret_rollout = _config_rollout(view, fleet)
    assert secret_rollout.state == "completed" and secret_rollout.id != flipped.id
    for r in _two_waves(view, secret_rollout):
        assert (
            json.loads((_config_dir(fleet, r.device) / "agent.json").read_text())["api_key"]
            == rotated
        )
        # what the device runs is named by the keyed digest, not the plain sha256 of its files
        assert fleet.device(r.device).state()["config_digest"] == r.config_digest
        files = _config_dir(fleet, r.device)
        agent_sha = hashlib.sha256((files / "agent.json").read_bytes()).hexdigest()
        assert r.config_digest != config_digest(
            [("agent.json", 0o640, agent_sha)], {"verbose": True}
        )
