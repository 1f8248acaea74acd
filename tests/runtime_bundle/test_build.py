"""`engine runtime bundle`: what it writes, where, signed by which key, and how it fails."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from datetime import datetime
from importlib.metadata import version
from pathlib import Path

import pytest

from engine.bundles import local_target
from engine.signing import generate_key, key_id, private_key_pem, public_key_text
from tests.bundles import RuntimeBundle, offline_pip_env, require_wheelhouse


def _engine(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in offline_pip_env().items() if not k.startswith("ENGINE_")}
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
        check=False,
    )


def _offline(wheelhouse: Path) -> list[str]:
    return ["--no-index", "--find-links", str(wheelhouse)]


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _repo_with_key(tmp_path: Path) -> tuple[Path, str]:
    repo = tmp_path / "repo"
    (repo / "keys").mkdir(parents=True)
    key = generate_key()
    (repo / "keys" / "release.key").write_bytes(private_key_pem(key))
    (repo / "engine.yaml").write_text("signing_key: keys/release.key\n")
    return repo, key_id(key.public_key())


def test_manifest_describes_the_wheels(runtime_bundle: RuntimeBundle) -> None:
    """bundle.json names this machine's target and the runtime's version, and lists every
    wheel in the directory with its real sha256 and size."""
    doc = json.loads((runtime_bundle.directory / "bundle.json").read_text())
    target = local_target()
    assert doc["format_version"] == 1
    assert (doc["target"], doc["platform"], doc["arch"], doc["python"]) == (
        target.name,
        target.platform,
        target.arch,
        target.python,
    )
    assert doc["runtime_version"] == version("fleet-rollout")
    assert datetime.fromisoformat(doc["created"]).tzinfo is not None
    on_disk = {p.name: p.read_bytes() for p in runtime_bundle.directory.glob("*.whl")}
    assert {f["name"] for f in doc["files"]} == set(on_disk)
    for entry in doc["files"]:
        data = on_disk[entry["name"]]
        assert entry["size"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()


def test_signature_is_a_release_signature(runtime_bundle: RuntimeBundle, tmp_path: Path) -> None:
    """bundle.json.sig has the format of release signatures: `engine release verify` checks it
    against the pinned key, and refuses another key."""
    pub = tmp_path / "bundle.pub"
    pub.write_text(runtime_bundle.public_key + "\n")
    manifest = str(runtime_bundle.directory / "bundle.json")
    ok = _engine("release", "verify", manifest, "--pub", str(pub))
    assert ok.returncode == 0, ok.stderr
    other = public_key_text(generate_key().public_key())
    refused = _engine("release", "verify", manifest, "--pub", other)
    assert refused.returncode == 1
    assert "signed by unknown key" in refused.stderr


@pytest.mark.slow
def test_key_and_out_from_engine_yaml(tmp_path: Path) -> None:
    """Without --key and --out, the bundle is signed by engine.yaml's signing_key and written
    to DIR/.engine/runtime-bundles/<target>; off a terminal it prints one summary line."""
    wheelhouse = require_wheelhouse()
    repo, kid = _repo_with_key(tmp_path)
    run = _engine("runtime", "bundle", "-C", str(repo), *_offline(wheelhouse))
    assert run.returncode == 0, run.stderr
    target = local_target().name
    directory = repo / ".engine" / "runtime-bundles" / target
    assert (directory / "bundle.json.sig").is_file()
    assert json.loads((directory / "bundle.json.sig").read_text())["signatures"][0]["keyid"] == kid
    (line,) = run.stdout.splitlines()
    assert line.startswith(f"{target}: runtime {version('fleet-rollout')}, ")
    assert f"signed by key {kid} -> {directory}" in line
    assert run.stderr == ""
    assert sorted(p.name for p in directory.parent.iterdir()) == [target]  # no leftovers


@pytest.mark.slow
def test_unsigned_bundle_warns(tmp_path: Path) -> None:
    """Without any signing key the bundle is written unsigned, with a warning on stderr."""
    wheelhouse = require_wheelhouse()
    repo = tmp_path / "repo"
    repo.mkdir()
    out = tmp_path / "out"
    run = _engine("runtime", "bundle", "-C", str(repo), "--out", str(out), *_offline(wheelhouse))
    assert run.returncode == 0, run.stderr
    assert "warning: no signing key" in run.stderr
    directory = out / local_target().name
    assert (directory / "bundle.json").is_file()
    assert not (directory / "bundle.json.sig").exists()
    assert "UNSIGNED" in run.stdout


@pytest.mark.slow
def test_failed_download_keeps_the_previous_bundle(tmp_path: Path) -> None:
    """A rebuild whose pip download fails exits 1 with pip's reason and leaves the previous
    bundle byte for byte as it was, with no staging directory behind."""
    wheelhouse = require_wheelhouse()
    repo, _ = _repo_with_key(tmp_path)
    first = _engine("runtime", "bundle", "-C", str(repo), "--json", *_offline(wheelhouse))
    assert first.returncode == 0, first.stderr
    (built,) = json.loads(first.stdout)["bundles"]
    directory = Path(built["directory"])
    before = _snapshot(directory)
    # Only the build backend: the runtime's wheel builds, its dependencies are nowhere.
    thin = tmp_path / "thin"
    thin.mkdir()
    for wheel in wheelhouse.glob("setuptools-*.whl"):
        shutil.copy2(wheel, thin)
    second = _engine("runtime", "bundle", "-C", str(repo), "--json", *_offline(thin))
    assert second.returncode == 1
    (failed,) = json.loads(second.stdout)["bundles"]
    assert failed["error"].startswith("pip download failed")
    assert "No matching distribution" in second.stderr
    assert _snapshot(directory) == before
    assert sorted(os.listdir(directory.parent)) == [directory.name]


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("solaris-sparc-py3.11", "is not <platform>-<arch>-py<X.Y>"),
        ("linux-arm64-py3.11", "arch 'arm64' is not one of x86_64, aarch64 for linux"),
        ("windows-x86_64-py3.12", "arch 'x86_64' is not one of amd64, arm64 for windows"),
        ("macos-arm64-py3.9", "needs Python 3.11 or newer"),
    ],
)
def test_bad_target_is_refused(target: str, message: str, tmp_path: Path) -> None:
    """A malformed or unsupported target is refused in one line before anything is built."""
    run = _engine("runtime", "bundle", "-C", str(tmp_path), "--target", target)
    assert run.returncode == 1
    (line,) = run.stderr.splitlines()
    assert line.startswith("engine runtime bundle: ") and message in line
    assert not (tmp_path / ".engine").exists()


def test_bad_signing_key_writes_nothing(tmp_path: Path) -> None:
    """A signing key file that is not a key fails every target and writes no bundle."""
    (tmp_path / "bad.key").write_text("not a key\n")
    out = tmp_path / "out"
    key = str(tmp_path / "bad.key")
    run = _engine("runtime", "bundle", "-C", str(tmp_path), "--key", key, "--out", str(out))
    assert run.returncode == 1
    assert f"{key}: cannot read the signing key" in run.stderr
    assert "No such file" not in run.stderr
    assert not out.exists() or not any(out.iterdir())


def test_broken_engine_yaml_is_reported(tmp_path: Path) -> None:
    """A typo in engine.yaml is reported with file and line, nothing built."""
    (tmp_path / "engine.yaml").write_text("signing_kye: keys/release.key\n")
    run = _engine("runtime", "bundle", "-C", str(tmp_path))
    assert run.returncode == 1
    assert "engine.yaml:1" in run.stderr and "signing_kye" in run.stderr


def test_runtime_wheel_leaves_the_dashboard_assets_out(runtime_bundle: RuntimeBundle) -> None:
    """The runtime's own wheel in the bundle carries the runtime's code but not the
    dashboard's vendored Swagger UI / ReDoc assets (megabytes no device uses)."""
    import zipfile

    [wheel] = runtime_bundle.directory.glob("fleet_rollout-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "agent_runtime/pull.py" in names and "engine/cli.py" in names
    assert not [n for n in names if "dashboard/static/vendor" in n]
