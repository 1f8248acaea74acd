"""Key rotation on a real device: root keys pinned, the keys document written by `engine keys`
in the repo the plan names, releases accepted only with currently listed keys."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine.signing import generate_key, private_key_pem, public_key_text, sign
from states.keyring import KeysDocument
from tests.runtime.conftest import MakeSandbox

pytestmark = pytest.mark.slow


def _engine(*args: str) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "engine", *args], capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr


def test_root_signed_keys_rotate_revoke_and_refuse_a_rolled_back_document(
    make_sandbox: MakeSandbox, tmp_path: Path
) -> None:
    """No document: refused. Document listing K1: 3.0.0 installs. 3.0.1 signed by K2 only:
    refused until a rotate lists K2. After K1 is revoked, the old document put back by a
    mirror is ignored and a K1-signed release (even an authorised rollback) is refused;
    every refusal leaves the installed release running untouched."""
    sb = make_sandbox()
    keys = tmp_path / "keys"
    keys.mkdir()
    root = keys / "root.key"
    root_key = generate_key()
    root.write_bytes(private_key_pem(root_key))
    k1_pub, k2_pub = keys / "k1.pub", keys / "k2.pub"
    k1_pub.write_text(sb.pinned[0])
    k2 = generate_key()
    k2_pub.write_text(public_key_text(k2.public_key()))
    sb.write_config(trusted_keys=[], root_keys=[public_key_text(root_key.public_key())])
    repo = ["-C", str(sb.repo), "--root-key", str(root)]

    sb.publish("3.0.0")
    sb.write_plan("3.0.0")
    refused = sb.converge()
    assert refused.returncode == 1 and "no keys document" in refused.stdout, refused.stdout
    assert list(sb.root.iterdir()) == []

    _engine("keys", "init", "--key", str(k1_pub), *repo)
    first = sb.converge()
    assert first.returncode == 0, first.stdout + first.stderr
    assert "accepted keys document version 1" in first.stdout
    assert sb.assert_consistent() == "3.0.0"
    v1 = {p.name: p.read_bytes() for p in (sb.repo / "keys").iterdir()}

    sb.publish("3.0.1", signer=k2)
    sb.write_plan("3.0.1", "3.0.0")
    pid = sb.agent_pid()
    unknown = sb.converge()
    assert unknown.returncode == 1 and "unknown key" in unknown.stdout, unknown.stdout
    assert sb.assert_consistent() == "3.0.0" and sb.agent_pid() == pid

    k1_id = next(iter(KeysDocument.parse(v1["keys.json"]).keys))
    _engine("keys", "rotate", "--add", str(k2_pub), *repo)
    _engine("keys", "revoke", k1_id, *repo)
    rotated = sb.converge()
    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    assert "accepted keys document version 3" in rotated.stdout
    assert sb.assert_consistent() == "3.0.1"

    for name, data in v1.items():  # a mirror serves the old document again
        (sb.repo / "keys" / name).write_bytes(data)
    shutil.rmtree(sb.repo / "artifacts" / "3.0.0")  # no repo copy: only the device's own
    sb.write_plan("3.0.0", "3.0.1")
    pid = sb.agent_pid()
    back = sb.converge()
    assert back.returncode == 1, back.stdout
    assert "older than version 3" in back.stdout and "unknown key" in back.stdout, back.stdout
    assert sb.assert_consistent() == "3.0.1" and sb.agent_pid() == pid


def test_threshold_two_needs_two_listed_keys_on_the_release(
    make_sandbox: MakeSandbox, tmp_path: Path
) -> None:
    """With threshold 2, a release signed by one listed key is refused; signed by two it
    installs."""
    sb = make_sandbox()
    root_key, k2 = generate_key(), generate_key()
    root = tmp_path / "root.key"
    root.write_bytes(private_key_pem(root_key))
    pubs = []
    for i, text in enumerate([sb.pinned[0], public_key_text(k2.public_key())]):
        pubs += ["--key", str(tmp_path / f"{i}.pub")]
        (tmp_path / f"{i}.pub").write_text(text)
    _engine("keys", "init", *pubs, "--threshold", "2", "-C", str(sb.repo), "--root-key", str(root))
    sb.write_config(root_keys=[public_key_text(root_key.public_key())])
    sb.publish("3.0.0")
    sb.write_plan("3.0.0")
    one = sb.converge()
    assert one.returncode == 1 and "signed by 1 of the 2" in one.stdout, one.stdout
    assert list(sb.root.iterdir()) == []
    manifest = sb.repo / "releases" / "3.0.0.yaml"
    manifest.with_name("3.0.0.yaml.sig").write_bytes(sign(manifest.read_bytes(), [sb.key, k2]))
    two = sb.converge()
    assert two.returncode == 0, two.stdout + two.stderr
    assert sb.assert_consistent() == "3.0.0"
