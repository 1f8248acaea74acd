"""`engine release new` writes a valid, signed manifest from a build; `engine release list`."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import yaml

from engine.cli import main
from inventory.catalog import load_release
from inventory.loader import load_operator_repo
from tests.rollouts.fleet import linux_devices, write_repo


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """An operator repo with the example releases 3.0.0 and 3.0.1; group prod runs 3.0.1."""
    groups = {"prod": {"match": {"platform": "linux"}, "agent": {"release": "3.0.1"}}}
    return write_repo(
        tmp_path / "repo", linux_devices("srv", 2), groups, versions=("3.0.0", "3.0.1")
    )


@pytest.fixture
def build(tmp_path: Path) -> Path:
    """An agent build: an executable entry point, a package, and build leftovers."""
    root = tmp_path / "build"
    (root / "core" / "__pycache__").mkdir(parents=True)
    (root / "nats_agent.py").write_text("print('agent')\n")
    os.chmod(root / "nats_agent.py", 0o755)
    (root / "core" / "agent.py").write_text("VERSION = '3.1.0'\n")
    (root / "core" / "__pycache__" / "agent.cpython-311.pyc").write_bytes(b"junk")
    return root


def test_new_release_hashes_copies_and_validates(
    repo: Path, build: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The manifest lists every file with its sha256, size and mode, the next serial, the
    previous release's health check and command, and loads as a valid release."""
    assert main(["release", "new", "3.1.0", "--from", str(build), "-C", str(repo)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        "release 3.1.0 (serial 3): 2 files, 33 bytes, for linux, macos, windows\n"
    )
    assert "unsigned: no signing key configured; sign with `engine release sign" in out
    loaded = load_release(repo / "releases" / "3.1.0.yaml", repo)
    manifest = loaded.manifest
    assert (str(manifest.version), manifest.serial) == ("3.1.0", 3)
    assert [str(v) for v in manifest.rollback_to] == ["3.0.1"]
    previous = load_release(repo / "releases" / "3.0.1.yaml", repo).manifest
    assert manifest.health_check == previous.health_check
    linux = manifest.platforms[next(iter(manifest.platforms))]
    entries = {f.path: f for f in linux.files}
    assert set(entries) == {"core/agent.py", "nats_agent.py"}
    agent = entries["nats_agent.py"]
    data = (build / "nats_agent.py").read_bytes()
    assert (agent.sha256, agent.size, agent.mode) == (
        hashlib.sha256(data).hexdigest(),
        len(data),
        0o755,
    )
    assert entries["core/agent.py"].mode == 0o644
    assert (repo / "artifacts" / agent.source).read_bytes() == data
    assert not (repo / "artifacts" / "3.1.0" / "core" / "__pycache__").exists()
    text = (repo / "releases" / "3.1.0.yaml").read_text()
    assert text.startswith("# Release 3.1.0, written by `engine release new` on ")
    assert "&id" not in text  # no YAML anchors: every platform's list written out
    assert load_operator_repo(repo).releases  # the repo still validates


def test_new_release_is_signed_with_the_configured_key(
    repo: Path, build: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With a key (engine.yaml's signing_key) the manifest is signed; verify accepts it."""
    assert main(["keygen", "--out", str(repo / "keys")]) == 0
    (repo / "engine.yaml").write_text(
        (repo / "engine.yaml").read_text() + "signing_key: keys/release-signing.key\n"
    )
    capsys.readouterr()
    args = ["release", "new", "3.1.0", "--from", str(build), "-C", str(repo), "--json"]
    assert main([*args, "--platform", "linux"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["signature"] == str(repo / "releases" / "3.1.0.yaml.sig")
    assert doc["platforms"] == ["linux"] and doc["files"] == 2 and doc["serial"] == 3
    pub = str(repo / "keys" / "release-signing.pub")
    assert main(["release", "verify", str(repo / "releases" / "3.1.0.yaml"), "--pub", pub]) == 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--health", "tcp:9000"],
            "engine release new: --health tcp:9000: unknown kind 'tcp'; expected one of "
            "heartbeat_file, http, process, server, nats (heartbeat_file:PATH, http:URL)",
        ),
        (
            ["--health", "process:x"],
            "engine release new: --health process:x: process takes no argument",
        ),
        (["--expires", "soon"], "engine release new: "),
    ],
    ids=["unknown-health", "health-argument", "bad-expires"],
)
def test_bad_options_are_refused(
    repo: Path, build: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    """Bad options exit 1 with the message; nothing is written."""
    assert main(["release", "new", "3.1.0", "--from", str(build), "-C", str(repo), *extra]) == 1
    assert capsys.readouterr().err.startswith(message)
    assert not (repo / "releases" / "3.1.0.yaml").exists()
    assert not (repo / "artifacts" / "3.1.0").exists()


def test_existing_version_and_links_are_refused(
    repo: Path, build: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A version already released, and a build with a symlink, are refused; nothing written."""
    assert main(["release", "new", "3.0.1", "--from", str(build), "-C", str(repo)]) == 1
    assert capsys.readouterr().err == (
        f"engine release new: {repo / 'releases' / '3.0.1.yaml'} already exists: "
        "release 3.0.1 was made before\n"
    )
    (build / "link.py").symlink_to(build / "nats_agent.py")
    assert main(["release", "new", "3.1.0", "--from", str(build), "-C", str(repo)]) == 1
    assert capsys.readouterr().err == (
        f"engine release new: {build / 'link.py'}: not a regular file "
        "(links and special files cannot be released)\n"
    )
    assert not (repo / "releases" / "3.1.0.yaml").exists()
    assert not (repo / "artifacts" / "3.1.0").exists()


def test_release_list_shows_serials_signatures_and_groups(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """release list: newest first, with serial, signature count and the groups using each."""
    (repo / "releases" / "3.0.1.yaml.sig").write_text('{"signatures": [{}, {}]}')
    devices = yaml.safe_load((repo / "inventory" / "fleet.yaml").read_text())
    devices["devices"]["srv-0001"]["pin"] = "3.0.0"
    (repo / "inventory" / "fleet.yaml").write_text(yaml.safe_dump(devices))
    files = {
        v: str(
            len(
                yaml.safe_load((repo / "releases" / f"{v}.yaml").read_text())["platforms"]["linux"][
                    "files"
                ]
            )
        )
        for v in ("3.0.0", "3.0.1")
    }
    assert main(["release", "list", "-C", str(repo)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "VERSION",
        "CHANNEL",
        "SERIAL",
        "EXPIRES",
        "PLATFORMS",
        "FILES",
        "SIGNED",
        "USED",
        "BY",
    ]
    assert lines[1].split() == [
        "3.0.1",
        "-",
        "2",
        "2036-01-01",
        "linux,macos,windows",
        files["3.0.1"],
        "yes",
        "(2)",
        "prod",
    ]
    assert lines[2].split() == [
        "3.0.0",
        "-",
        "1",
        "2036-01-01",
        "linux,macos,windows",
        files["3.0.0"],
        "NO",
        "1",
        "pinned",
    ]
    assert main(["release", "list", "-C", str(repo), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(r["version"], r["signatures"], r["groups"]) for r in doc["releases"]] == [
        ("3.0.1", 2, ["prod"]),
        ("3.0.0", 0, []),
    ]
