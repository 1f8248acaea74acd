"""A real runtime whose token another enrollment replaced learns why, and recovers by
an operator's approval (ADR 0010)."""

from __future__ import annotations

import json

import pytest
import requests

from tests.e2e.conftest import MakeFleet, fleet_group, specs
from tests.harness import wait_until

pytestmark = pytest.mark.slow


def test_replaced_token_is_logged_with_its_reason_and_approval_readmits(
    make_fleet: MakeFleet,
) -> None:
    """After an invite-code enrollment takes the device's id, the runtime logs that its token
    was replaced and that its new enrollment awaits approval; once approved it reports again."""
    fleet = make_fleet(specs(1), fleet_group("3.0.0"))
    fleet.setup("3.0.0")
    fleet.start()
    fleet.wait_reported("3.0.0")
    (device,) = fleet.devices.values()
    invite = fleet.repo.engine("devices", "invite", device.id, "--json")
    code = json.loads(invite.stdout)["code"]
    taken = requests.post(
        fleet.server.url + "/v1/enroll",
        json={"device": device.id, "platform": "linux", "invite_code": code,
              "device_key": "k" * 43},
        timeout=10,
    )  # fmt: skip
    assert taken.status_code == 200, taken.text
    wait_until(
        "the runtime to log why its token stopped working",
        lambda: (
            "this device's token was replaced" in device.log_text()
            and "enrollment awaits an operator's approval" in device.log_text()
        ),
        timeout=60,
    )
    assert "enrollment with an invite code" in device.log_text()
    marker = len(device.log_text())
    approved = fleet.repo.engine("devices", "approve", device.id)
    assert "approved" in approved.stdout
    wait_until(
        "the runtime to enroll again once approved",
        lambda: f"enrolled {device.id}" in device.log_text()[marker:],
        timeout=60,
    )
    assert device.running() and device.heartbeating("3.0.0")
