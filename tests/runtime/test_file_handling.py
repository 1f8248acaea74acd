"""Runtime file handling under attack or odd mounts: links in the agent root, a state
directory on another file system, servers dripping bytes (real files, processes, server)."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.http import serve
from tests.harness.sandbox import Sandbox
from tests.runtime.conftest import MakeSandbox

SHM = Path("/dev/shm")


def _tree(path: Path) -> dict[str, str]:
    """Relative path -> sha256 (or "dir") of everything under ``path``."""
    out: dict[str, str] = {}
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path).as_posix()
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _installed(sb: Sandbox, version: str, current: str | None = None) -> None:
    sb.write_plan(version, current)
    run = sb.converge()
    assert run.returncode == 0, run.stdout + run.stderr
    assert sb.assert_consistent() == version


# -- links inside the agent root ------------------------------------------------------------


@pytest.mark.parametrize(
    ("layout", "link"),
    [("in_place", "core"), ("in_place", "backup"), ("versioned", "releases")],
)
def test_link_planted_in_the_agent_root_is_refused_and_nothing_outside_changes(
    make_sandbox: MakeSandbox, tmp_path: Path, layout: str, link: str
) -> None:
    """A directory the runtime writes into, replaced by a link to a directory outside the
    agent root: the update is refused naming the link, and the outside directory is intact."""
    sb = make_sandbox(layout=layout)
    sb.publish("3.0.0", extra_files={"core/legacy.py": b"LEGACY = True\n"})
    sb.publish("3.0.1")
    _installed(sb, "3.0.0")
    outside = tmp_path / "outside"
    real = sb.root / link
    if real.exists():  # the agent moves the real directory out and links to it
        shutil.copytree(real, outside)
        shutil.rmtree(real)
    else:
        outside.mkdir()
    (outside / "precious.txt").write_bytes(b"not the runtime's to touch\n")
    os.symlink(outside, real, target_is_directory=True)
    before = _tree(outside)
    sb.write_plan("3.0.1", "3.0.0")
    run = sb.converge()
    assert run.returncode == 1, run.stdout + run.stderr
    assert "is a symbolic link" in run.stdout and str(real) in run.stdout, run.stdout
    assert _tree(outside) == before
    assert sb.journal_json()["phase"] == "FAILED"  # type: ignore[index]
    assert sb.state_json()["installed"] == "3.0.0"
    assert sb.staging_entries() == []


def test_link_as_a_release_file_is_refused_not_read(
    make_sandbox: MakeSandbox, tmp_path: Path
) -> None:
    """A release file replaced by a link to a file outside: the backup refuses to read
    through it, and the outside file is neither copied nor changed."""
    sb = make_sandbox(layout="in_place")
    sb.publish("3.0.0")
    sb.publish("3.0.1")
    _installed(sb, "3.0.0")
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"outside secret\n")
    victim = sb.root / "core" / "behaviour.py"
    victim.unlink()
    os.symlink(secret, victim)
    sb.write_plan("3.0.1", "3.0.0")
    run = sb.converge()
    assert run.returncode == 1, run.stdout + run.stderr
    assert "is a symbolic link" in run.stdout, run.stdout
    assert secret.read_bytes() == b"outside secret\n"
    copies = [p for p in (sb.root / "backup").rglob("*") if p.is_file()]
    assert all(p.read_bytes() != b"outside secret\n" for p in copies)
    assert victim.is_symlink()  # refused before the swap: nothing in the root changed


# -- staging on another file system (EXDEV) -------------------------------------------------


@pytest.fixture
def other_fs(tmp_path: Path) -> Iterator[Path]:
    """A directory on another file system than tmp_path (the tmpfs /dev/shm)."""
    if not SHM.is_dir() or SHM.stat().st_dev == tmp_path.stat().st_dev:
        reason = f"{SHM} is not a separate file system here"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI must run the cross-file-system tests)")
        pytest.skip(reason)
    d = Path(tempfile.mkdtemp(prefix="rt-state-", dir=SHM))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("layout", ["in_place", "versioned"])
def test_state_dir_on_another_file_system_updates_and_rolls_back(
    make_sandbox: MakeSandbox, other_fs: Path, layout: str
) -> None:
    """State (and staging) on tmpfs, agent root on disk: the runtime says so at start,
    the update commits (each file copied across), a broken release rolls back cleanly."""
    sb = make_sandbox(layout=layout)
    sb.state = other_fs / "state"
    sb.write_config()
    sb.publish("3.0.0")
    sb.publish("3.0.1")
    sb.publish("3.0.2")  # broken: never heartbeats
    assert (sb.state.parent.stat().st_dev) != sb.root.stat().st_dev
    _installed(sb, "3.0.0")
    sb.write_plan("3.0.1", "3.0.0")
    run = sb.converge()
    assert run.returncode == 0, run.stdout + run.stderr
    assert "different file systems" in run.stdout, run.stdout
    assert sb.assert_consistent() == "3.0.1"
    assert sb.stray_files() == []
    sb.write_plan("3.0.2", "3.0.1")
    run = sb.converge()
    assert run.returncode == 1 and "result: rolled_back" in run.stdout, run.stdout
    assert sb.assert_consistent() == "3.0.1"
    assert sb.stray_files() == [] and sb.staging_entries() == []


# -- slow retrieval --------------------------------------------------------------------------


@pytest.mark.parametrize("what", ["releases/3.0.1.yaml", "core/agent.py"])
def test_dripping_server_ends_as_slow_retrieval_and_frees_the_lock(
    make_sandbox: MakeSandbox, what: str
) -> None:
    """A server dripping the manifest or an artifact a byte at a time: the converge ends
    with a slow-retrieval failure, the agent is untouched, and the next converge runs."""
    sb = make_sandbox(layout="in_place")
    sb.write_config(download={"stall_timeout": "5s", "retries": 0, "connect_timeout": "2s",
                              "min_speed": 1000, "min_speed_grace": "0.3s"})  # fmt: skip
    sb.publish("3.0.0")
    sb.publish("3.0.1")
    _installed(sb, "3.0.0")
    pid, files = sb.agent_pid(), sb.snapshot()
    with serve(sb.repo, {what: "drip"}) as http:
        sb.write_plan("3.0.1", "3.0.0", base_url=http.url)
        run = sb.converge()
    assert run.returncode == 1, run.stdout + run.stderr
    assert "slow retrieval" in run.stdout and "minimum average of 1000" in run.stdout, run.stdout
    assert sb.agent_pid() == pid and sb.snapshot() == files
    assert sb.staging_entries() == []
    with serve(sb.repo) as http:
        sb.write_plan("3.0.1", "3.0.0", base_url=http.url)
        run = sb.converge()
    assert run.returncode == 0, run.stdout + run.stderr
    assert sb.assert_consistent() == "3.0.1"


def test_temporary_files_of_a_killed_run_are_removed_from_the_state_dir(
    make_sandbox: MakeSandbox,
) -> None:
    """Atomic-write leftovers of another (dead) process in the state directory are removed by
    the next start; the runtime's own files stay."""
    sb = make_sandbox(layout="in_place")
    sb.publish("3.0.0")
    _installed(sb, "3.0.0")
    left = [sb.state / ".journal.json.tmp-999999", sb.state / ".state.json.tmp-999998"]
    for p in left:
        p.write_bytes(b'{"half": ')
    keep = sb.state / ".hidden-but-not-temporary"
    keep.write_bytes(b"x")
    run = sb.converge()
    assert run.returncode == 0, run.stdout + run.stderr
    assert [p for p in left if p.exists()] == []
    assert keep.exists() and sb.state_json()["installed"] == "3.0.0"
