"""`agent-runtime adopt`: a field install is identified by hashing it against signed release
manifests; files of no release are backed up and reported unknown; a forged manifest is never
trusted; the agent's files are never changed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent_runtime.cli import main as runtime_main
from engine.signing import generate_key, public_key_text, sign
from tests.bootstrap.conftest import REPO_ROOT, FieldDevice

RELEASES = REPO_ROOT / "examples" / "fleet" / "releases"


@pytest.fixture
def setup(tmp_path: Path, field_device: FieldDevice) -> tuple[Path, Path]:
    """(device config, releases dir with 3.0.0 and 3.0.1 signed by the pinned key)."""
    key = generate_key()
    releases = tmp_path / "releases"
    releases.mkdir()
    for v in ("3.0.0", "3.0.1"):
        data = (RELEASES / f"{v}.yaml").read_bytes()
        (releases / f"{v}.yaml").write_bytes(data)
        (releases / f"{v}.yaml.sig").write_bytes(sign(data, [key]))
    config = tmp_path / "device.yaml"
    config.write_text(yaml.safe_dump({
        "device": "field-01", "platform": "linux", "agent_root": str(field_device.agent_root),
        "state_dir": str(tmp_path / "state"), "trusted_keys": [public_key_text(key.public_key())],
    }))  # fmt: skip
    return config, releases


def adopt(
    config: Path, releases: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[int, dict[str, Any]]:
    """Run `agent-runtime adopt --json`; (exit code, result)."""
    code = runtime_main(["adopt", "--json", "--config", str(config), "--releases", str(releases)])
    return code, json.loads(capsys.readouterr().out)


def test_known_release_is_adopted_as_installed_and_known_good(
    setup: tuple[Path, Path], field_device: FieldDevice, capsys: pytest.CaptureFixture[str]
) -> None:
    """The files of 3.0.0 are 3.0.0 (not 3.0.1); state says installed and known-good 3.0.0."""
    config, releases = setup
    before = field_device.files()
    code, result = adopt(config, releases, capsys)
    assert code == 0 and result["status"] == "known" and result["version"] == "3.0.0"
    state = json.loads((config.parent / "state" / "state.json").read_text())
    assert (state["installed"], state["known_good"], state["adopted_from"]) == (
        "3.0.0", "3.0.0", "hash")  # fmt: skip
    assert field_device.files() == before
    assert adopt(config, releases, capsys) == (0, result)  # a second run finds the same


def test_changed_file_makes_the_install_unknown_and_backs_it_up(
    setup: tuple[Path, Path], field_device: FieldDevice, capsys: pytest.CaptureFixture[str]
) -> None:
    """A locally edited core/agent.py matches no release: exit 1, `unknown`, the edited file
    (and only the unmatched files) copied to the backup; nothing in the agent root changes."""
    config, releases = setup
    edited = field_device.agent_root / "core" / "agent.py"
    edited.write_text(edited.read_text() + "\n# local hotfix\n")
    before = field_device.files()
    code, result = adopt(config, releases, capsys)
    assert code == 1 and result["status"] == "unknown" and result["version"] is None
    assert result["unmatched"] == ["core/agent.py"]
    assert (Path(result["backup"]) / "core" / "agent.py").read_bytes() == edited.read_bytes()
    assert field_device.files() == before
    state = json.loads((config.parent / "state" / "state.json").read_text())
    assert state["installed"] is None and state["adoption"]["status"] == "unknown"


def test_forged_manifest_is_not_trusted(
    setup: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A manifest signed by another key is ignored (named on the output), so files matching
    only it stay unknown."""
    config, releases = setup
    other = generate_key()
    for v in ("3.0.0", "3.0.1"):
        path = releases / f"{v}.yaml"
        (releases / f"{v}.yaml.sig").write_bytes(sign(path.read_bytes(), [other]))
    code = runtime_main(["adopt", "--config", str(config), "--releases", str(releases)])
    said = capsys.readouterr().out
    assert code == 1
    assert "ignoring release 3.0.0" in said and "unknown key" in said
