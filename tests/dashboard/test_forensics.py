"""Forensics: one device's report, heartbeat, transaction and timeline; a rollout's devices by
state with their last step; from the service layer, the CLI and the operator API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from engine.cli import main
from engine.rollouts import DeviceState
from engine.rollouts.errors import DeviceNotFoundError, RolloutNotFoundError
from engine.service.forensics import read_device, read_rollout_devices
from engine.store import Store
from tests.dashboard.conftest import ADMIN
from tests.dashboard.data import CONFIRM_FAILURE, FAILED, NOW

AUTH = {"Authorization": f"Bearer {ADMIN}"}


def test_device_detail_has_report_heartbeat_transaction_and_timeline(
    store: Store, rollout_id: int
) -> None:
    """The failed device's report, heartbeat, transaction and every step event, newest first."""
    d = read_device(store, FAILED, now=NOW, online_within=180)
    assert d.report is not None and d.report.agent_version == "3.0.1"
    assert d.heartbeat is not None and d.heartbeat.pid == 4242
    assert d.transaction is not None and d.transaction.detail == CONFIRM_FAILURE
    assert [e.step for e in d.events][:3] == ["rollback_confirm", "rollback_swap", "confirm"]
    assert d.events_total == 8 and d.events[2].detail == CONFIRM_FAILURE
    assert d.online and d.enrolled
    assert [m.rollout_id for m in d.rollouts] == [rollout_id]
    usage = {p.version: p for p in d.performance}
    assert usage["3.0.3"].rss_last_bytes == 90_000_000 and usage["3.0.1"].cpu_percent == 2.5


def test_halted_rollout_promises_no_retry(store: Store, rollout_id: int) -> None:
    """A failure reason written with "retry at" says no retry once the rollout halted."""
    d = read_device(store, FAILED, now=NOW)
    reason = d.rollouts[0].reason
    assert reason is not None and "retry at" not in reason
    assert reason.endswith("not retried: the rollout is halted")
    assert d.rollouts[0].retry_at is None


def test_unknown_device_and_rollout_are_errors(store: Store, rollout_id: int) -> None:
    """An unknown device or rollout raises an error naming it."""
    with pytest.raises(DeviceNotFoundError, match="nobody"):
        read_device(store, "nobody")
    with pytest.raises(RolloutNotFoundError, match="99"):
        read_rollout_devices(store, "99")


def test_rollout_devices_by_state_with_last_step(store: Store, rollout_id: int) -> None:
    """Counts per state; the failed device with its last step and detail; a state filter."""
    page = read_rollout_devices(store, str(rollout_id), now=NOW)
    assert page.states == {"failed": 1, "pending": 3, "succeeded": 1}
    assert page.total == 5 and len(page.devices) == 5
    failed = read_rollout_devices(store, "linux-prod@3.0.3", states=[DeviceState.FAILED], now=NOW)
    assert [d.device for d in failed.devices] == [FAILED] and failed.total == 1
    step = failed.devices[0].last_step
    assert step is not None and step.step == "rollback_confirm"
    assert failed.devices[0].bucket == "failed"
    paged = read_rollout_devices(store, str(rollout_id), limit=2, offset=4, now=NOW)
    assert len(paged.devices) == 1 and paged.total == 5


def test_cli_devices_show(
    repo: Path,
    rollout_id: int,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`engine devices show` prints the timeline with the failed step's detail; --json parses."""
    monkeypatch.setenv("COLUMNS", "250")
    assert main(["devices", "show", FAILED, "-C", str(repo)]) == 0
    out = capsys.readouterr().out
    assert "CONFIRM: heartbeat says 3.0.1" in out and "rollback_confirm" in out
    assert "not retried: the rollout is halted" in out
    assert main(["devices", "show", FAILED, "-C", str(repo), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["events_total"] == 8 and document["heartbeat"]["version"] == "3.0.1"
    assert main(["devices", "show", "nobody", "-C", str(repo)]) == 1
    assert "no device 'nobody'" in capsys.readouterr().err


def test_cli_status_rollout_lists_devices(
    repo: Path,
    rollout_id: int,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`engine status --rollout N` lists devices by state with the last step and its detail."""
    monkeypatch.setenv("COLUMNS", "250")
    assert main(["status", "-C", str(repo), "--rollout", str(rollout_id)]) == 0
    out = capsys.readouterr().out
    assert "failed 1" in out and "pending 3" in out and FAILED in out
    assert "rollback_confirm ok" in out
    args = ["status", "-C", str(repo), "--rollout", "1", "--json", "--device-state", "failed"]
    assert main(args) == 0
    document = json.loads(capsys.readouterr().out)
    assert [d["device"] for d in document["devices"]["devices"]] == [FAILED]
    assert main(["status", "-C", str(repo), "--rollout", "1", "--device-state", "broken"]) == 1
    assert "allowed: pending" in capsys.readouterr().err
    assert main(["status", "-C", str(repo), "--device-state", "failed"]) == 1
    assert "needs --rollout" in capsys.readouterr().err


def test_api_device_and_rollout_devices(client: TestClient, rollout_id: int) -> None:
    """The operator API answers both reads; unknown ones are 404, bad filters 422."""
    device = client.get(f"/v1/admin/devices/{FAILED}", headers=AUTH)
    assert device.status_code == 200 and device.json()["events_total"] == 8
    page = client.get(
        f"/v1/admin/rollouts/{rollout_id}/devices", params={"state": "failed"}, headers=AUTH
    )
    assert page.status_code == 200 and [d["device"] for d in page.json()["devices"]] == [FAILED]
    assert client.get("/v1/admin/devices/nobody", headers=AUTH).status_code == 404
    assert client.get("/v1/admin/rollouts/77/devices", headers=AUTH).status_code == 404
    bad = client.get(f"/v1/admin/rollouts/{rollout_id}/devices?state=nope", headers=AUTH)
    assert bad.status_code == 422 and "failed" in bad.text
    assert client.get(f"/v1/admin/devices/{FAILED}").status_code == 401


def test_openapi_types_the_forensics_endpoints(client: TestClient) -> None:
    """Response models in the OpenAPI document; the rollout action is an enum."""
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]

    def ok_schema(path: str, method: str) -> dict[str, str]:
        answer = paths[path][method]["responses"]["200"]
        schema: dict[str, str] = answer["content"]["application/json"]["schema"]
        return schema

    assert ok_schema("/v1/admin/devices/{device}", "get")["$ref"].endswith("/DeviceDetail")
    assert ok_schema("/v1/admin/rollouts/{rollout}/devices", "get")["$ref"].endswith(
        "/RolloutDevicesPage"
    )
    assert ok_schema("/v1/admin/rollouts/{rollout}/{action}", "post")["$ref"].endswith(
        "/RolloutStatus"
    )
    params = paths["/v1/admin/rollouts/{rollout}/{action}"]["post"]["parameters"]
    action = next(p for p in params if p["name"] == "action")["schema"]
    ref = action["$ref"].rsplit("/", 1)[-1]
    assert spec["components"]["schemas"][ref]["enum"] == ["pause", "resume", "abort"]


def test_cli_status_help_names_every_device_state(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--device-state`'s help lists the states the option accepts, all of them."""
    monkeypatch.setenv("COLUMNS", "1000")  # one line: argparse wraps the help at the terminal
    with pytest.raises(SystemExit):
        main(["status", "--help"])
    listed = capsys.readouterr().out.split("(repeatable): ", 1)[1].split("\n", 1)[0]
    assert [s.strip() for s in listed.split(",")] == [s.value for s in DeviceState]
