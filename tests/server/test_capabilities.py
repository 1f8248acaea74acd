"""What runtimes can do, through a real `engine serve` on SQLite and PostgreSQL: devices say
it at check-in (``features``), the server keeps it with their report, and `engine plan`
blocks the devices whose runtime cannot take what their rollout would offer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine.capabilities import NOT_SUPERVISED_REASON
from engine.store import Store
from states.protocol import FEATURE_CONFIG, FEATURE_RUNTIME_UPDATE
from tests.harness import wait_until
from tests.server.conftest import ServerHandle, copy_fleet, running_server
from tests.server.helpers import bearer

pytestmark = pytest.mark.slow

INVENTORY = """\
devices:
  cfg-bare: {platform: linux, site: cfg}
  cfg-able: {platform: linux, site: cfg}
  rt-plain: {platform: linux, site: rt}
  rt-super: {platform: linux, site: rt}
groups:
  cfg:
    match: {site: cfg}
    agent: {release: "3.0.1"}
  rt:
    match: {site: rt}
    agent: {release: "3.0.0"}
    runtime: {release: "0.2.0"}
"""
#: What each device's runtime says it can do at check-in (None: the key is left out,
#: as a runtime older than managed config sends it).
FEATURES: dict[str, list[str] | None] = {
    "cfg-bare": None,
    "cfg-able": [FEATURE_CONFIG],
    "rt-plain": [FEATURE_CONFIG],
    "rt-super": [FEATURE_RUNTIME_UPDATE, FEATURE_CONFIG],
}


def _repo(tmp_path: Path) -> Path:
    repo = copy_fleet(tmp_path / "fleet")
    for path in (repo / "inventory").iterdir():
        path.unlink()
    (repo / "inventory" / "lab.yaml").write_text(INVENTORY)
    manifest = repo / "releases" / "3.0.1.yaml"
    manifest.write_text(manifest.read_text() + "flags:\n  verbose: {type: bool, default: false}\n")
    # A runtime release is a directory of bundles; the plan only looks for one.
    target = repo / "runtime-releases" / "0.2.0" / "linux-x86_64-py3.11"
    target.mkdir(parents=True)
    (target / "bundle.json").write_text("{}\n")
    return repo


def _engine(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "engine", *args, "-C", str(repo)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode in (0, 2), done.stdout + done.stderr
    return done


def _checkin(server: ServerHandle, device: str, token: str, features: list[str] | None) -> None:
    body: dict[str, Any] = {
        "platform": "linux",
        "agent_version": "3.0.0",
        "known_good": "3.0.0",
        "runtime_version": "0.1.0",
        "agent_running": True,
    }
    if features is not None:
        body["features"] = features
    with httpx.Client(base_url=server.url, timeout=10) as c:
        r = c.post(f"/v1/devices/{device}/checkin", json=body, headers=bearer(token))
    assert r.status_code == 200, r.text


def _stored(url: str) -> dict[str, str | None]:
    with Store.open(url, migrate=False) as store, store.read() as conn:
        rows = conn.exec_driver_sql("SELECT device, features FROM reports").all()
    return {r[0]: r[1] for r in rows}


def _plan(repo: Path, url: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(_engine(repo, "plan", "--json", "--state", url).stdout)
    return doc


def _actions(devices: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    return {d["device"]: (d["action"], d["reason"]) for d in devices}


def test_features_are_kept_with_reports_and_the_plan_blocks_what_runtimes_cannot_take(
    tmp_path: Path, store_url: str
) -> None:
    """cfg-bare (no features) is blocked from 3.0.1, which carries flags; rt-plain (not under
    the supervisor) is blocked from runtime 0.2.0; the others move. When rt-plain's runtime
    later says it can update itself, the next plan moves it and its reports digest changed."""
    repo = _repo(tmp_path)
    with running_server(repo, store_url) as server:
        tokens = {d: server.enroll(d) for d in FEATURES}
        for device, features in FEATURES.items():
            _checkin(server, device, tokens[device], features)
        wait_until("reports stored", lambda: len(_stored(store_url)) == 4, timeout=30)
        assert _stored(store_url) == {
            "cfg-bare": "[]",
            "cfg-able": '["config"]',
            "rt-plain": '["config"]',
            "rt-super": '["config", "runtime_update"]',
        }
        plan = _plan(repo, store_url)
        agent = _actions(plan["devices"])
        assert agent["cfg-bare"][0] == "blocked"
        assert "cannot install managed config files and flags" in agent["cfg-bare"][1]
        assert agent["cfg-able"][0] == "update"
        runtime = _actions(plan["runtime_devices"])
        assert runtime["rt-plain"] == ("blocked", NOT_SUPERVISED_REASON)
        assert runtime["rt-super"] == ("update", "runtime 0.1.0 -> 0.2.0")
        text = _engine(repo, "plan", "--state", store_url, "--verbose").stdout
        assert "runtime is not supervised" in " ".join(text.split())

        # Who can update itself: engine devices list (table and JSON) and show.
        lines = _engine(repo, "devices", "list", "--state", store_url).stdout.splitlines()
        header = lines[0].split()
        at = header.index("RUNTIME")
        assert header[at + 1] == "SELF-UPDATE"
        able = {r.split()[0]: r.split()[at + 1] for r in lines[1:]}
        assert able == {"cfg-bare": "no", "cfg-able": "no", "rt-plain": "no", "rt-super": "yes"}
        listed = json.loads(_engine(repo, "devices", "list", "--json", "--state", store_url).stdout)
        assert {d["device"]: d["runtime_self_update"] for d in listed}["rt-super"] is True
        shown = _engine(repo, "devices", "show", "rt-plain", "--state", store_url).stdout
        assert "0.1.0 no self-update" in shown

        # Applied: the runtime rollout leaves rt-plain out with the reason, and engine status
        # lists each of its devices with its runtime.
        _engine(repo, "apply", "--yes", "--allow-unsigned", "--state", store_url)
        ref = ("--state", store_url, "--rollout", "rt@runtime-0.2.0")
        status = json.loads(_engine(repo, "status", "--json", *ref).stdout)
        rows = {d["device"]: d for d in status["devices"]["devices"]}
        assert (rows["rt-plain"]["state"], rows["rt-plain"]["reason"]) == (
            "excluded",
            NOT_SUPERVISED_REASON,
        )
        assert rows["rt-super"]["state"] in ("pending", "offered")  # the controller runs
        assert rows["rt-super"]["runtime_self_update"] is True
        table = " ".join(_engine(repo, "status", *ref).stdout.split())
        assert "0.1.0 self-update" in table and "0.1.0 no self-update" in table

        _checkin(server, "rt-plain", tokens["rt-plain"], FEATURES["rt-super"])
        wait_until(
            "rt-plain's new features stored",
            lambda: _stored(store_url)["rt-plain"] == '["config", "runtime_update"]',
            timeout=30,
        )
        again = _plan(repo, store_url)
        assert _actions(again["runtime_devices"])["rt-plain"][0] == "update"
        assert again["state"]["reports_digest"] != plan["state"]["reports_digest"]
