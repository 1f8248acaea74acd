"""`engine keygen --root`, `engine keys init|rotate|revoke|sign|show` and threshold signing of
releases through the engine CLI, checked the way a device checks them."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from engine.cli import main
from states.keyring import KeysDocument, KeysDocumentError, RootOfTrust, accept_keys_document
from tests.runtime_services.conftest import REPO

MANIFEST = REPO / "examples" / "fleet" / "releases" / "3.0.1.yaml"


def _keygen(out: Path, *args: str) -> tuple[Path, Path]:
    name = args[args.index("--name") + 1] if "--name" in args else "root"
    assert main(["keygen", "--out", str(out), *args]) == 0
    return out / f"{name}.key", out / f"{name}.pub"


def _keys(repo: Path, *args: str) -> int:
    return main(["keys", *args, "-C", str(repo)])


def _doc(repo: Path) -> KeysDocument:
    return KeysDocument.parse((repo / "keys" / "keys.json").read_bytes())


def _device_accepts(repo: Path, *root_pubs: Path, threshold: int = 1) -> KeysDocument:
    root = RootOfTrust.from_texts([p.read_text() for p in root_pubs], threshold)
    keys = repo / "keys"
    return accept_keys_document(
        (keys / "keys.json").read_bytes(),
        (keys / "keys.json.sig").read_bytes(),
        root,
        datetime.now(UTC),
        None,
    )


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    """A root key pair and two release key pairs."""
    out = tmp_path / "keys"
    root_key, root_pub = _keygen(out, "--root")
    a_key, a_pub = _keygen(out, "--name", "a")
    b_key, b_pub = _keygen(out, "--name", "b")
    return {"root": root_key, "root.pub": root_pub, "a": a_key, "a.pub": a_pub,
            "b": b_key, "b.pub": b_pub}  # fmt: skip


def test_keygen_root_names_the_pair_root_and_says_where_to_pin_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--root writes root.key/root.pub and tells the operator to pin it under root_keys."""
    _keygen(tmp_path, "--root")
    assert (tmp_path / "root.key").is_file() and (tmp_path / "root.pub").is_file()
    assert "root_keys" in capsys.readouterr().out


def test_init_rotate_revoke_each_write_a_new_root_signed_version(
    tmp_path: Path, keys: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """init lists key a (version 1); rotate adds b with threshold 2 (version 2); revoke a
    lowers nothing silently: threshold 2 of one key is refused, so the operator sets 1."""
    repo = tmp_path / "repo"
    root = ["--root-key", str(keys["root"])]
    assert _keys(repo, "init", "--key", str(keys["a.pub"]), *root) == 0
    assert _device_accepts(repo, keys["root.pub"]).version == 1
    assert _keys(repo, "rotate", "--add", str(keys["b.pub"]), "--threshold", "2", *root) == 0
    doc = _device_accepts(repo, keys["root.pub"])
    assert (doc.version, doc.threshold, len(doc.keys)) == (2, 2, 2)
    a_id = next(k for k, e in doc.keys.items() if e.public == keys["a.pub"].read_text().strip())
    before = (repo / "keys" / "keys.json").read_bytes()
    assert _keys(repo, "revoke", a_id, *root) == 1  # threshold 2 of 1 key: refused
    assert "threshold 2 is more than the 1 key(s) listed" in capsys.readouterr().err
    assert (repo / "keys" / "keys.json").read_bytes() == before
    assert _keys(repo, "rotate", "--remove", a_id, "--threshold", "1", *root) == 0
    assert _keys(repo, "rotate", "--add", str(keys["a.pub"]), *root) == 0
    assert _keys(repo, "revoke", a_id, *root) == 0
    doc = _device_accepts(repo, keys["root.pub"])
    assert doc.version == 5 and a_id in doc.revoked and a_id not in doc.keys
    assert _keys(repo, "rotate", "--add", str(keys["a.pub"]), *root) == 1  # revoked for good


def test_refusals_are_clear_and_change_nothing(
    tmp_path: Path, keys: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """rotate before init, init twice, no root key, an unknown key id: exit 1, one line each."""
    repo = tmp_path / "repo"
    root = ["--root-key", str(keys["root"])]
    assert _keys(repo, "rotate", "--add", str(keys["a.pub"]), *root) == 1
    assert "use engine keys init" in capsys.readouterr().err
    assert _keys(repo, "init", "--key", str(keys["a.pub"])) == 1
    assert "no root key" in capsys.readouterr().err
    assert not (repo / "keys" / "keys.json").exists()
    assert _keys(repo, "init", "--key", str(keys["a.pub"]), *root) == 0
    assert _keys(repo, "init", "--key", str(keys["b.pub"]), *root) == 1
    assert "use rotate" in capsys.readouterr().err
    assert _keys(repo, "revoke", "0123456789abcdef", *root) == 1
    assert "not in the keys document" in capsys.readouterr().err
    assert _keys(repo, "rotate", "--add", "ed25519:" + "A" * 43 + "=", *root) == 1  # all zero
    assert "refused public key" in capsys.readouterr().err
    assert _doc(repo).version == 1


def test_root_threshold_two_signs_in_turn(tmp_path: Path, keys: dict[str, Path]) -> None:
    """With two root keys required, one holder's init is not enough; `keys sign` by the
    second holder completes it."""
    repo = tmp_path / "repo"
    root2_key, root2_pub = _keygen(tmp_path / "r2", "--root")
    assert _keys(repo, "init", "--key", str(keys["a.pub"]), "--root-key", str(keys["root"])) == 0
    with pytest.raises(KeysDocumentError, match="1 of the 2"):
        _device_accepts(repo, keys["root.pub"], root2_pub, threshold=2)
    assert _keys(repo, "sign", "--root-key", str(root2_key)) == 0
    assert _device_accepts(repo, keys["root.pub"], root2_pub, threshold=2).version == 1


def test_show_checks_as_a_device_would(
    tmp_path: Path, keys: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """show --root passes with the right root and fails with another one."""
    repo = tmp_path / "repo"
    assert _keys(repo, "init", "--key", str(keys["a.pub"]), "--root-key", str(keys["root"])) == 0
    capsys.readouterr()
    assert _keys(repo, "show", "--root", str(keys["root.pub"])) == 0
    assert "ok: signed by the root threshold" in capsys.readouterr().out
    assert _keys(repo, "show", "--root", str(keys["a.pub"])) == 1
    assert "not signed by the root" in capsys.readouterr().err


def test_release_signed_in_turn_meets_a_threshold_of_two(
    tmp_path: Path, keys: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """sign --append keeps the first holder's signature; verify --threshold 2 then passes, and
    fails on one signature."""
    manifest = tmp_path / "releases" / "3.0.1.yaml"
    manifest.parent.mkdir()
    shutil.copy(MANIFEST, manifest)
    pubs = ["--pub", str(keys["a.pub"]), "--pub", str(keys["b.pub"])]
    assert main(["release", "sign", str(manifest), "--key", str(keys["a"])]) == 0
    assert main(["release", "verify", str(manifest), *pubs, "--threshold", "2"]) == 1
    assert "1 of the 2" in capsys.readouterr().err
    assert main(["release", "sign", str(manifest), "--key", str(keys["b"]), "--append"]) == 0
    sig = json.loads(manifest.with_name("3.0.1.yaml.sig").read_text())
    assert len(sig["signatures"]) == 2
    assert main(["release", "verify", str(manifest), *pubs, "--threshold", "2"]) == 0
