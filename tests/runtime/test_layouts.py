"""Layout details without an agent: backup pruning, versioned pointer flips and rollback."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent_runtime.layouts import InPlaceLayout, SwapPlan, VersionedLayout
from fleetbase.version import Version
from states.manifest import FileEntry


def _entry(path: str, data: bytes) -> FileEntry:
    return FileEntry(
        path=path, sha256=hashlib.sha256(data).hexdigest(), size=len(data), source=f"x/{path}"
    )


def _plan(tmp_path: Path, old: str | None, new: str, files: dict[str, bytes]) -> SwapPlan:
    staging = tmp_path / "staging" / f"tx-{new}"
    for rel, data in files.items():
        (staging / "files" / rel).parent.mkdir(parents=True, exist_ok=True)
        (staging / "files" / rel).write_bytes(data)
    return SwapPlan(
        txid=f"tx-{new}",
        old=None if old is None else Version(old),
        new=Version(new),
        old_files=None,
        new_files=[_entry(r, d) for r, d in files.items()],
        staging=staging,
    )


def test_in_place_prunes_old_backups_but_keeps_known_good(tmp_path: Path) -> None:
    """Backups past retention go at commit, except the versions to keep."""
    layout = InPlaceLayout(tmp_path / "root")
    old = datetime.now(UTC) - timedelta(days=10)
    for v in ("1.0.0", "1.0.1", "1.0.2"):
        d = layout.backup_dir(Version(v))
        d.mkdir(parents=True)
        (d / "index.json").write_text(json.dumps({"created": old.isoformat()}))
    fresh = layout.backup_dir(Version("1.0.3"))
    fresh.mkdir(parents=True)
    (fresh / "index.json").write_text(json.dumps({"created": datetime.now(UTC).isoformat()}))
    plan = _plan(tmp_path, "1.0.3", "1.0.4", {"a.py": b"a"})
    layout.finish(plan, {Version("1.0.2")}, datetime.now(UTC) - timedelta(days=7))
    left = sorted(p.name for p in (tmp_path / "root" / "backup").iterdir())
    assert left == ["1.0.2", "1.0.3"]


def test_versioned_pointer_file_swap_and_rollback(tmp_path: Path) -> None:
    """With the Windows pointer file, swap flips current.txt and rollback flips it back."""
    layout = VersionedLayout(tmp_path / "root", pointer="file")
    first = _plan(tmp_path, None, "1.0.0", {"a.py": b"one"})
    layout.swap(first, lambda _p: None)
    assert (tmp_path / "root" / "current.txt").read_text().strip() == "1.0.0"
    second = _plan(tmp_path, "1.0.0", "1.0.1", {"a.py": b"two"})
    touched: list[str] = []
    layout.swap(second, touched.append)
    assert layout.current_version() == Version("1.0.1")
    assert (layout.active_dir(Version("1.0.1")) / "a.py").read_bytes() == b"two"
    layout.rollback(second, touched)
    assert layout.current_version() == Version("1.0.0")
    assert not (tmp_path / "root" / "releases" / "1.0.1").exists()
    assert (layout.active_dir(Version("1.0.0")) / "a.py").read_bytes() == b"one"
