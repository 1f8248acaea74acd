"""Installing a runtime release beside the running runtime (agent_runtime.runtime_update).

The bundle comes from a stand-in for the server client that reads the session's
signed bundle from disk; a refused bundle must change nothing but the outcome.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent_runtime import supervisor as sv
from agent_runtime.errors import ServerProtocolError
from agent_runtime.runtime_update import RuntimeHome, local_target
from engine.signing import generate_key, public_key_text
from states.protocol import RuntimeOffer
from tests.bundles import RuntimeBundle


class DiskClient:
    """Answers ``download`` from ``root/<version>/<target>/<file>`` like the server would."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.paths: list[str] = []

    def download(self, path: str, limit: int) -> bytes:
        self.paths.append(path)
        file = self.root / path.removeprefix("/runtime/releases/")
        if not file.is_file():
            raise ServerProtocolError(f"GET {path}: HTTP 404", 404)
        return file.read_bytes()


def _release(bundle: RuntimeBundle, root: Path) -> str:
    version = json.loads((bundle.directory / "bundle.json").read_text())["runtime_version"]
    bundle.copy_to(root / version)
    return str(version)


def _home(tmp_path: Path) -> RuntimeHome:
    home = tmp_path / "home"
    (home / sv.VERSIONS).mkdir(parents=True)
    sv.write_json(home / sv.STATE, {"current": "0.0.1", "trial": None})
    return RuntimeHome(home, "0.0.1", out=lambda _line: None)


def _offer(version: str) -> RuntimeOffer:
    return RuntimeOffer(version=version, rollout="g@runtime-" + version,
                        releases=f"/runtime/releases/{version}/")  # fmt: skip


def test_a_bundle_signed_by_another_key_is_refused_and_nothing_moves(
    runtime_bundle: RuntimeBundle, tmp_path: Path
) -> None:
    assert runtime_bundle.target == local_target()
    version = _release(runtime_bundle, tmp_path / "served")
    home = _home(tmp_path)
    other = public_key_text(generate_key().public_key())
    client = DiskClient(tmp_path / "served")
    assert not home.install(_offer(version), client, [other])  # type: ignore[arg-type]
    outcome = home.outcome()
    assert outcome is not None and (outcome.target, outcome.result) == (version, "failed")
    assert "signed by unknown key(s)" in (outcome.detail or "")
    assert not (home.home / "downloads").exists()
    assert sv.read_json(home.home / sv.STATE) == {"current": "0.0.1", "trial": None}
    assert list((home.home / sv.VERSIONS).iterdir()) == []


def test_a_tampered_wheel_is_refused(runtime_bundle: RuntimeBundle, tmp_path: Path) -> None:
    version = _release(runtime_bundle, tmp_path / "served")
    wheel = next((tmp_path / "served" / version / runtime_bundle.target).glob("psutil-*.whl"))
    data = bytearray(wheel.read_bytes())
    data[200] ^= 1
    wheel.write_bytes(bytes(data))
    home = _home(tmp_path)
    client = DiskClient(tmp_path / "served")
    assert not home.install(_offer(version), client, [runtime_bundle.public_key])  # type: ignore[arg-type]
    outcome = home.outcome()
    assert outcome is not None and outcome.result == "failed"
    assert "sha256" in (outcome.detail or "")
    assert sv.read_json(home.home / sv.STATE) == {"current": "0.0.1", "trial": None}


def test_an_offer_whose_bundle_is_another_version_is_refused(
    runtime_bundle: RuntimeBundle, tmp_path: Path
) -> None:
    version = _release(runtime_bundle, tmp_path / "served")
    (tmp_path / "served" / version).rename(tmp_path / "served" / "9.9.9")
    home = _home(tmp_path)
    client = DiskClient(tmp_path / "served")
    assert not home.install(_offer("9.9.9"), client, [runtime_bundle.public_key])  # type: ignore[arg-type]
    outcome = home.outcome()
    assert outcome is not None and f"the bundle is runtime {version}, not 9.9.9" in (
        outcome.detail or ""
    )


@pytest.mark.slow
def test_a_good_bundle_is_installed_beside_and_a_trial_written(
    runtime_bundle: RuntimeBundle, tmp_path: Path
) -> None:
    version = _release(runtime_bundle, tmp_path / "served")
    home = _home(tmp_path)
    client = DiskClient(tmp_path / "served")
    assert home.install(_offer(version), client, [runtime_bundle.public_key])  # type: ignore[arg-type]
    state = sv.read_json(home.home / sv.STATE)
    assert state is not None and state["current"] == "0.0.1"
    trial = state["trial"]
    assert (trial["version"], trial["previous"], trial["started"]) == (version, "0.0.1", False)
    assert sv.runtime_exe(home.home, version).exists()
    assert not (home.home / sv.VERSIONS / sv.installing_marker(version)).exists()
    assert not (home.home / "downloads" / version).exists()
    assert home.outcome() is None
    # the new runtime, once on trial and checked in, confirms itself
    sv.write_json(home.home / sv.STATE, {"current": version, "trial": dict(trial, started=True)})
    RuntimeHome(home.home, version, out=lambda _line: None).confirm_trial()
    assert sv.read_json(home.home / sv.CONFIRMED) == {"trial": trial["id"]}


def test_only_a_home_laid_out_by_the_supervisor_is_usable(tmp_path: Path) -> None:
    """A runtime reports it can update itself (FEATURE_RUNTIME_UPDATE) only from a home with
    versions/ and a runtime.json naming the current version, that it can write to."""
    home = _home(tmp_path)
    assert home.usable()
    missing = RuntimeHome(tmp_path / "nowhere", "0.0.1", out=lambda _line: None)
    assert not missing.usable()
    (home.home / sv.STATE).write_text("{not json")
    assert not home.usable()
    sv.write_json(home.home / sv.STATE, {"current": None, "trial": None})
    assert not home.usable()
    sv.write_json(home.home / sv.STATE, {"current": "0.0.1", "trial": None})
    (home.home / sv.VERSIONS).rmdir()
    assert not home.usable()
