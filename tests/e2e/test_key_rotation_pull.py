"""Pull mode against the real server: a device that pins a root key learns the release keys
from the keys document `engine serve` serves, and installs a release signed by a key it never
pinned."""

from __future__ import annotations

import pytest

from engine.signing import generate_key, private_key_pem, public_key_text
from tests.e2e.conftest import MakeFleet, fleet_group, specs

pytestmark = pytest.mark.slow


def test_device_with_root_key_installs_release_signed_by_a_delegated_key(
    make_fleet: MakeFleet,
) -> None:
    """3.0.1 is signed only by K2, which no device config names; the device accepts it after
    fetching /v1/keys (root-signed, listing K1 and K2) from the server."""
    fleet = make_fleet(specs(1), fleet_group("3.0.0"))
    fleet.setup("3.0.0")
    keys = fleet.repo.root / "keys"
    root, k2 = generate_key(), generate_key()
    (keys / "root.key").write_bytes(private_key_pem(root))
    (keys / "k2.key").write_bytes(private_key_pem(k2))
    (keys / "k2.pub").write_text(public_key_text(k2.public_key()))
    fleet.repo.engine("keys", "init", "--key", str(fleet.repo.pub), "--key", str(keys / "k2.pub"),
                      "--root-key", str(keys / "root.key"))  # fmt: skip
    fleet.repo.engine("release", "sign", "releases/3.0.1.yaml", "--key", str(keys / "k2.key"))
    device = next(iter(fleet.devices.values()))
    device.write_config(
        fleet.repo.public_key(), fleet.server.url, fleet.server.enrollment_secret,
        root_keys=[public_key_text(root.public_key())],
    )  # fmt: skip
    fleet.start()
    fleet.wait_reported("3.0.0")
    fleet.repo.set_release("3.0.1")
    applied = fleet.repo.engine("apply", "--yes", "--wait", check=False, timeout=120)
    assert applied.returncode == 0, applied.stdout + applied.stderr + device.log_text()
    assert device.installed() == "3.0.1"
    log = device.log_text()
    assert f"accepted keys document version 1 from {fleet.server.url}/v1/keys" in log, log
