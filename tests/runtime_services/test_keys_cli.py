"""`engine keygen` and `engine release sign|verify` through the engine CLI."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest

from engine.cli import main
from engine.signing import load_private_key, public_key_text
from tests.runtime_services.conftest import REPO

MANIFEST = REPO / "examples" / "fleet" / "releases" / "3.0.1.yaml"


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    """A copy of the example release manifest 3.0.1."""
    dest = tmp_path / "releases" / "3.0.1.yaml"
    dest.parent.mkdir()
    shutil.copy(MANIFEST, dest)
    return dest


def keygen(out: Path, name: str = "release") -> tuple[Path, Path]:
    """Run `engine keygen` and return the key pair's paths."""
    assert main(["keygen", "--out", str(out), "--name", name]) == 0
    return out / f"{name}.key", out / f"{name}.pub"


def test_keygen_writes_private_key_0600_and_public_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """keygen writes a PKCS#8 key readable by its owner only and the pinned-key line."""
    private, public = keygen(tmp_path / "keys")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    key = load_private_key(private)
    assert public.read_text() == public_key_text(key.public_key()) + "\n"
    assert "key id " in capsys.readouterr().out


def test_keygen_refuses_to_overwrite_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second keygen with the same name fails and leaves the first key; --force replaces it."""
    private, _ = keygen(tmp_path)
    before = private.read_bytes()
    assert main(["keygen", "--out", str(tmp_path), "--name", "release"]) == 1
    assert "refusing to overwrite (use --force)" in capsys.readouterr().err
    assert private.read_bytes() == before
    assert main(["keygen", "--out", str(tmp_path), "--name", "release", "--force"]) == 0
    assert private.read_bytes() != before
    assert stat.S_IMODE(private.stat().st_mode) == 0o600


def test_sign_then_verify_round_trip(
    tmp_path: Path, manifest: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A manifest signed with a fresh key verifies against its public key."""
    private, public = keygen(tmp_path / "keys")
    capsys.readouterr()
    assert main(["release", "sign", str(manifest), "--key", str(private)]) == 0
    assert manifest.with_name("3.0.1.yaml.sig").is_file()
    assert "key id" in capsys.readouterr().out
    assert main(["release", "verify", str(manifest), "--pub", str(public)]) == 0
    assert "is signed by key" in capsys.readouterr().out
    pinned = public.read_text().strip()
    assert main(["release", "verify", str(manifest), "--pub", pinned]) == 0


def test_verify_fails_after_one_byte_changes(
    tmp_path: Path, manifest: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Changing one byte of a signed manifest makes verify fail."""
    private, public = keygen(tmp_path)
    assert main(["release", "sign", str(manifest), "--key", str(private)]) == 0
    data = bytearray(manifest.read_bytes())
    data[data.index(b"serial: 2") + len("serial: ")] = ord("9")
    manifest.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["release", "verify", str(manifest), "--pub", str(public)]) == 1
    assert "does not match the manifest bytes" in capsys.readouterr().err


def test_verify_with_unknown_key_fails(
    tmp_path: Path, manifest: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A signature by a key that is not pinned is refused."""
    private, _ = keygen(tmp_path, "signer")
    _, other = keygen(tmp_path, "other")
    assert main(["release", "sign", str(manifest), "--key", str(private)]) == 0
    capsys.readouterr()
    assert main(["release", "verify", str(manifest), "--pub", str(other)]) == 1
    assert "signed by unknown key(s)" in capsys.readouterr().err


def test_sign_refuses_invalid_manifest_and_writes_nothing(
    tmp_path: Path, manifest: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An invalid manifest (bad sha256) is not signed; the error names file, line and key."""
    private, _ = keygen(tmp_path)
    text = manifest.read_text()
    bad = text.replace("sha256: ", "sha256: XYZ", 1)
    manifest.write_text(bad)
    capsys.readouterr()
    assert main(["release", "sign", str(manifest), "--key", str(private)]) == 1
    err = capsys.readouterr().err
    line = bad.splitlines().index(next(x for x in bad.splitlines() if "XYZ" in x)) + 1
    assert f"3.0.1.yaml:{line}:" in err
    assert "platforms.linux.files[0].sha256" in err
    assert "64 lowercase hexadecimal" in err
    assert not manifest.with_name("3.0.1.yaml.sig").exists()


def test_sign_refuses_unknown_key_in_manifest(
    tmp_path: Path, manifest: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A typo'd key in the manifest is refused with a suggestion; nothing is written."""
    private, _ = keygen(tmp_path)
    manifest.write_text(manifest.read_text().replace("rollback_to:", "rollback_too:"))
    capsys.readouterr()
    assert main(["release", "sign", str(manifest), "--key", str(private)]) == 1
    assert "did you mean 'rollback_to'" in capsys.readouterr().err
    assert not manifest.with_name("3.0.1.yaml.sig").exists()


def test_sign_finds_key_from_env_then_engine_yaml(
    tmp_path: Path,
    manifest: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Without --key: $ENGINE_SIGNING_KEY, else engine.yaml's signing_key under -C DIR."""
    env_key, _ = keygen(tmp_path / "env", "env")
    _, repo_pub = keygen(tmp_path / "repo" / "keys", "repo")
    (tmp_path / "repo" / "engine.yaml").write_text("signing_key: keys/repo.key\n")
    capsys.readouterr()
    monkeypatch.setenv("ENGINE_SIGNING_KEY", str(env_key))
    assert main(["release", "sign", str(manifest), "-C", str(tmp_path / "repo")]) == 0
    env_id = capsys.readouterr().out
    monkeypatch.delenv("ENGINE_SIGNING_KEY")
    assert main(["release", "sign", str(manifest), "-C", str(tmp_path / "repo")]) == 0
    repo_id = capsys.readouterr().out
    assert env_id != repo_id
    assert main(["release", "verify", str(manifest), "--pub", str(repo_pub)]) == 0


def test_sign_without_any_key_explains_where_keys_come_from(
    tmp_path: Path,
    manifest: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """No --key, no env, no engine.yaml: refused with the three ways to name a key."""
    monkeypatch.delenv("ENGINE_SIGNING_KEY", raising=False)
    assert main(["release", "sign", str(manifest), "-C", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "--key KEYFILE" in err and "ENGINE_SIGNING_KEY" in err and "signing_key" in err
    assert not manifest.with_name("3.0.1.yaml.sig").exists()


def test_verify_without_signature_file_fails(
    tmp_path: Path, manifest: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """verify of an unsigned manifest fails naming the missing .sig."""
    _, public = keygen(tmp_path)
    capsys.readouterr()
    assert main(["release", "verify", str(manifest), "--pub", str(public)]) == 1
    assert "3.0.1.yaml.sig" in capsys.readouterr().err
