"""verify_bundle accepts a bundle exactly as built and refuses every alteration of it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.signing import generate_key, public_key_text, sign
from states.bundle import BundleError, verify_bundle
from states.signing import raw_trusted_keys
from tests.bundles import RuntimeBundle


def _trusted(bundle: RuntimeBundle) -> dict[str, bytes]:
    return raw_trusted_keys([bundle.public_key])


def _wheel(directory: Path) -> Path:
    return sorted(directory.glob("pydantic_core-*.whl"))[0]


def test_intact_bundle_verifies(runtime_bundle: RuntimeBundle) -> None:
    """The bundle as built verifies against its key and lists every wheel in the directory."""
    manifest = verify_bundle(runtime_bundle.directory, _trusted(runtime_bundle))
    assert manifest.target == runtime_bundle.target
    wheels = sorted(p.name for p in runtime_bundle.directory.glob("*.whl"))
    assert sorted(f.name for f in manifest.files) == wheels
    assert any(name.startswith("fleet_rollout-") for name in wheels)


def test_flipped_byte_is_refused(runtime_bundle: RuntimeBundle, tmp_path: Path) -> None:
    """One flipped byte in a wheel (same size) is refused, naming the file and the sha256."""
    copy = runtime_bundle.copy_to(tmp_path)
    wheel = _wheel(copy)
    data = bytearray(wheel.read_bytes())
    data[len(data) // 2] ^= 0x01
    wheel.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=rf"{wheel.name}: sha256 .* does not match"):
        verify_bundle(copy, _trusted(runtime_bundle))


def test_truncated_file_is_refused(runtime_bundle: RuntimeBundle, tmp_path: Path) -> None:
    """A truncated wheel is refused by its size."""
    copy = runtime_bundle.copy_to(tmp_path)
    wheel = _wheel(copy)
    wheel.write_bytes(wheel.read_bytes()[:-1])
    with pytest.raises(BundleError, match=r"bytes, bundle.json says"):
        verify_bundle(copy, _trusted(runtime_bundle))


def test_missing_file_is_refused(runtime_bundle: RuntimeBundle, tmp_path: Path) -> None:
    """A wheel the manifest lists but the directory lacks is refused."""
    copy = runtime_bundle.copy_to(tmp_path)
    missing = _wheel(copy)
    missing.unlink()
    with pytest.raises(BundleError, match=rf"missing file\(s\).*{missing.name}"):
        verify_bundle(copy, _trusted(runtime_bundle))


def test_extra_file_is_refused(runtime_bundle: RuntimeBundle, tmp_path: Path) -> None:
    """A file the manifest does not list (e.g. a planted wheel) is refused."""
    copy = runtime_bundle.copy_to(tmp_path)
    (copy / "evil-1.0-py3-none-any.whl").write_bytes(b"PK")
    with pytest.raises(BundleError, match=r"not listed in bundle.json.*evil-1.0"):
        verify_bundle(copy, _trusted(runtime_bundle))


def test_edited_manifest_is_refused(runtime_bundle: RuntimeBundle, tmp_path: Path) -> None:
    """A manifest changed after signing (a wheel's hash swapped in) fails the signature."""
    copy = runtime_bundle.copy_to(tmp_path)
    wheel = _wheel(copy)
    wheel.write_bytes(b"not the wheel that was signed")
    doc = json.loads((copy / "bundle.json").read_text())
    for entry in doc["files"]:
        if entry["name"] == wheel.name:
            entry["size"] = wheel.stat().st_size
    (copy / "bundle.json").write_text(json.dumps(doc))
    with pytest.raises(BundleError, match="does not match the manifest bytes"):
        verify_bundle(copy, _trusted(runtime_bundle))


def test_signature_by_another_key_is_refused(runtime_bundle: RuntimeBundle, tmp_path: Path) -> None:
    """A bundle re-signed by a key the device does not pin is refused."""
    copy = runtime_bundle.copy_to(tmp_path)
    other = generate_key()
    (copy / "bundle.json.sig").write_bytes(sign((copy / "bundle.json").read_bytes(), [other]))
    with pytest.raises(BundleError, match="signed by unknown key"):
        verify_bundle(copy, _trusted(runtime_bundle))
    # ... and accepted by a device that pins that key: the check is the key, not the bytes.
    assert verify_bundle(copy, raw_trusted_keys([public_key_text(other.public_key())]))


def test_missing_signature_is_refused(runtime_bundle: RuntimeBundle, tmp_path: Path) -> None:
    """An unsigned bundle is refused when keys are pinned."""
    copy = runtime_bundle.copy_to(tmp_path)
    (copy / "bundle.json.sig").unlink()
    with pytest.raises(BundleError, match="not signed"):
        verify_bundle(copy, _trusted(runtime_bundle))


def test_manifest_naming_a_path_is_refused(runtime_bundle: RuntimeBundle, tmp_path: Path) -> None:
    """A manifest listing a file outside the bundle directory is malformed."""
    copy = runtime_bundle.copy_to(tmp_path)
    doc = json.loads((copy / "bundle.json").read_text())
    doc["files"][0]["name"] = "../../etc/evil.whl"
    (copy / "bundle.json").write_text(json.dumps(doc))
    with pytest.raises(BundleError, match=r"files\.0\.name: .*not the file name of a wheel"):
        verify_bundle(copy, None)
