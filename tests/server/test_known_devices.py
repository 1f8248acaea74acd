"""Which device ids may enroll: the inventory, re-read when an unknown id asks."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.server import _known
from engine.server._known import InventoryDevices, load_inventory_devices
from tests.server.conftest import copy_fleet


def test_device_added_to_the_inventory_is_known_without_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A device added to inventory/ after start is found by re-reading the repo."""
    monkeypatch.setattr(_known, "RELOAD_SECONDS", 0.0)
    repo = copy_fleet(tmp_path / "fleet")
    known = InventoryDevices(repo, load_inventory_devices(repo), load_inventory_devices)
    assert "late-0001" not in known
    (repo / "inventory" / "late.yaml").write_text("devices:\n  late-0001: {platform: linux}\n")
    assert "late-0001" in known
    assert "berlin-pos-0001" in known


def test_broken_inventory_keeps_the_last_good_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the inventory has errors, the ids read before stay and unknown ids stay unknown."""
    monkeypatch.setattr(_known, "RELOAD_SECONDS", 0.0)
    repo = copy_fleet(tmp_path / "fleet")
    known = InventoryDevices(repo, load_inventory_devices(repo), load_inventory_devices)
    (repo / "inventory" / "late.yaml").write_text("devices:\n  late-0001: {platform: beos}\n")
    assert "late-0001" not in known
    assert "berlin-pos-0001" in known


def test_unknown_ids_reread_at_most_every_interval(tmp_path: Path) -> None:
    """A burst of unknown ids re-reads the repo once per interval, not once per request."""
    calls: list[Path] = []

    def load(root: Path) -> frozenset[str]:
        calls.append(root)
        return frozenset({"a"})

    known = InventoryDevices(tmp_path, frozenset({"a"}), load)
    assert all(f"x{i}" not in known for i in range(100))
    assert calls == []  # the first interval starts at construction


def test_unknown_ids_reread_only_when_the_inventory_changed(tmp_path: Path) -> None:
    """Unknown ids asking for hours re-read nothing until a file under inventory/ changes."""
    repo = copy_fleet(tmp_path / "fleet")
    calls: list[Path] = []
    now = [0.0]

    def load(root: Path) -> frozenset[str]:
        calls.append(root)
        return load_inventory_devices(root)

    known = InventoryDevices(repo, load_inventory_devices(repo), load, clock=lambda: now[0])
    for i in range(500):  # 500 probes, 11 s apart: well past the look interval each time
        now[0] += 11
        assert f"stranger-{i}" not in known
    assert calls == []
    (repo / "inventory" / "late.yaml").write_text("devices:\n  late-0001: {platform: linux}\n")
    now[0] += 11
    assert "late-0001" in known
    assert len(calls) == 1
