"""examples/build_releases.py: deterministic artifacts and valid, hash-true manifests."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import yaml

from engine.signing import generate_key, private_key_pem, public_key_text, trusted_keys, verify
from inventory.catalog import load_manifest
from tests.runtime_services.conftest import REPO

SCRIPT = REPO / "examples" / "build_releases.py"
COMMITTED = REPO / "examples" / "fleet"


def build(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the build script as a user would."""
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )


def tree(root: Path) -> dict[str, bytes]:
    """Relative path → bytes of every file under ``root``."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_two_builds_are_byte_identical(tmp_path: Path) -> None:
    """Building twice writes the same files with the same bytes."""
    assert build("--out", str(tmp_path / "a")).returncode == 0
    assert build("--out", str(tmp_path / "b")).returncode == 0
    a, b = tree(tmp_path / "a"), tree(tmp_path / "b")
    assert a == b
    assert len([p for p in a if p.startswith("releases/")]) == 5


def test_committed_example_fleet_is_current(tmp_path: Path) -> None:
    """The committed example artifacts and manifests equal a fresh build, with no extra files."""
    assert build("--out", str(tmp_path)).returncode == 0
    fresh = tree(tmp_path)
    committed = tree(COMMITTED)
    assert {path: committed.get(path) for path in fresh} == fresh
    built = tuple(f"artifacts/{v}/" for v in ("3.0.0", "3.0.1", "3.0.2", "3.0.3", "3.0.4"))
    assert {p for p in committed if p.startswith(built)} == {
        p for p in fresh if p.startswith(built)
    }


def test_manifest_hashes_and_sizes_match_artifacts(tmp_path: Path) -> None:
    """Every file entry's sha256 and size match the artifact its source names."""
    assert build("--out", str(tmp_path)).returncode == 0
    for version in ("3.0.0", "3.0.1", "3.0.2", "3.0.3", "3.0.4"):
        _, manifest = load_manifest(tmp_path / "releases" / f"{version}.yaml")
        assert str(manifest.version) == version
        assert manifest.health_check is not None
        for release in manifest.platforms.values():
            assert release.command == ["{python}", "nats_agent.py"]
            for entry in release.files:
                data = (tmp_path / "artifacts" / entry.source).read_bytes()
                assert hashlib.sha256(data).hexdigest() == entry.sha256
                assert len(data) == entry.size


def test_releases_differ_in_version_and_behaviour(tmp_path: Path) -> None:
    """Each release bakes its own version and behaviour into its files; serials increase."""
    assert build("--out", str(tmp_path)).returncode == 0
    art = tmp_path / "artifacts"
    assert 'VERSION = "3.0.2"' in (art / "3.0.2/linux/core/version.py").read_text()
    assert 'BEHAVIOUR = "exit_at_start"' in (art / "3.0.2/macos/core/behaviour.py").read_text()
    assert 'BEHAVIOUR = "no_heartbeat"' in (art / "3.0.3/windows/core/behaviour.py").read_text()
    assert 'BEHAVIOUR = "leak_memory"' in (art / "3.0.4/linux/core/behaviour.py").read_text()
    serials = [
        yaml.safe_load((tmp_path / "releases" / f"{v}.yaml").read_text())["serial"]
        for v in ("3.0.0", "3.0.1", "3.0.2", "3.0.3", "3.0.4")
    ]
    assert serials == [1, 2, 3, 4, 5]


def test_sign_and_pad_options(tmp_path: Path) -> None:
    """--sign writes verifiable signatures; --pad-mb adds a padding file of that size."""
    key = generate_key()
    (tmp_path / "k.key").write_bytes(private_key_pem(key))
    out = tmp_path / "fleet"
    done = build("--out", str(out), "--versions", "3.0.1", "--sign", str(tmp_path / "k.key"),
                 "--pad-mb", "1")  # fmt: skip
    assert done.returncode == 0, done.stderr
    manifest = out / "releases" / "3.0.1.yaml"
    signature = out / "releases" / "3.0.1.yaml.sig"
    trusted = trusted_keys([public_key_text(key.public_key())])
    assert verify(manifest.read_bytes(), signature.read_bytes(), trusted)
    assert (out / "artifacts/3.0.1/linux/data/padding.bin").stat().st_size == 1024 * 1024
    assert not (out / "releases" / "3.0.0.yaml").exists()


def test_unknown_version_is_refused_and_nothing_written(tmp_path: Path) -> None:
    """A version outside the catalogue is a usage error; no files appear."""
    done = build("--out", str(tmp_path / "fleet"), "--versions", "3.0.1,9.9.9")
    assert done.returncode == 2
    assert "unknown release(s) 9.9.9" in done.stderr
    assert not (tmp_path / "fleet").exists()
