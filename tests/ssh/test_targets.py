"""Inventory ssh settings: group defaults, device overrides, {device}, typos refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.ssh import ssh_targets
from inventory.errors import InventoryError
from inventory.loader import load_operator_repo

INVENTORY = """\
devices:
  a: {platform: linux, tags: [shop]}
  b: {platform: linux, tags: [shop], ssh: {host: 10.0.0.9, port: 2222}}
  c: {platform: macos}
groups:
  shops:
    match: {tags: shop}
    ssh: {host: "{device}.shops.example", user: ops, key_file: keys/ops,
          agent_root: "/srv/{device}"}
  all-linux:
    match: {platform: linux}
    priority: -1
    ssh: {host: never-used, user: nobody}
"""


def _repo(tmp_path: Path, text: str) -> Path:
    (tmp_path / "inventory").mkdir()
    (tmp_path / "releases").mkdir()
    (tmp_path / "inventory" / "fleet.yaml").write_text(text)
    return tmp_path


def test_group_default_device_override_and_device_placeholder(tmp_path: Path) -> None:
    """The highest-priority group's ssh is the default, a device's own keys win one by one,
    {device} becomes the id, relative paths are under the repo; no settings: not a target."""
    repo = load_operator_repo(_repo(tmp_path, INVENTORY))
    targets, without = ssh_targets(repo, ["a", "b", "c"])
    assert without == ["c"]
    a, b = targets["a"], targets["b"]
    assert (a.endpoint.host, a.endpoint.port, a.endpoint.user) == ("a.shops.example", 22, "ops")
    assert a.endpoint.key_file == tmp_path / "keys" / "ops"
    assert a.endpoint.known_hosts == tmp_path / ".engine" / "known_hosts"
    assert a.agent_root == "/srv/a" and a.service == "systemd"
    assert (b.endpoint.host, b.endpoint.port, b.endpoint.user) == ("10.0.0.9", 2222, "ops")
    assert b.agent_root == "/srv/b"


def test_unknown_ssh_key_is_an_error_with_its_line(tmp_path: Path) -> None:
    """A typo under ssh fails loading with the file, line and the key path."""
    text = "devices:\n  a:\n    platform: linux\n    ssh: {host: x, prot: 22}\n"
    with pytest.raises(InventoryError) as e:
        load_operator_repo(_repo(tmp_path, text))
    assert "fleet.yaml:4" in e.value.render() and "devices.a.ssh.prot" in e.value.render()
