"""Device config loading: defaults, relative paths, errors with file, line and key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_runtime.config import load_config
from agent_runtime.errors import ConfigError
from engine.signing import generate_key, public_key_text

KEY = public_key_text(generate_key().public_key())


def _write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "device.yaml"
    path.write_text(body)
    return path


def test_minimal_config_gets_defaults_and_resolves_paths(tmp_path: Path) -> None:
    """Relative paths resolve against the config's directory; defaults fill the rest."""
    cfg = load_config(
        _write(
            tmp_path,
            f"device: d1\nagent_root: agent\nstate_dir: state\ntrusted_keys: ['{KEY}']\n",
        )
    )
    assert cfg.agent_root == tmp_path / "agent" and cfg.state_dir == tmp_path / "state"
    assert cfg.layout == "in_place" and cfg.max_attempts == 3
    assert cfg.backup_retention.days == 7 and cfg.service.manager == "process"


def test_unknown_key_names_file_line_and_path(tmp_path: Path) -> None:
    """A typo in a nested key fails with file:line, the key path and the allowed keys."""
    body = (
        f"device: d1\nagent_root: a\nstate_dir: s\ntrusted_keys: ['{KEY}']\n"
        "download:\n  stal_timeout: 3s\n"
    )
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, body))
    msg = str(e.value)
    assert "device.yaml:6: download.stal_timeout: unknown key" in msg
    assert "stall_timeout" in msg


def test_bad_values_are_named(tmp_path: Path) -> None:
    """A malformed key and a bad layout are both reported with their lines."""
    body = "device: d1\nagent_root: a\nstate_dir: s\ntrusted_keys: ['ed25519:nope']\nlayout: x\n"
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, body))
    msg = str(e.value)
    assert "device.yaml:4: trusted_keys" in msg and "device.yaml:5: layout" in msg


def test_missing_file_and_non_mapping(tmp_path: Path) -> None:
    """A missing file and a YAML list are clear errors."""
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(_write(tmp_path, "- a\n"))
