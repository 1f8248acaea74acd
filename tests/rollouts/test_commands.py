"""`engine apply`, `engine status` and `engine rollout` against a real store."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from engine.cli import main
from engine.store import Store
from tests.rollouts.fleet import linux_devices, report, write_repo


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """Six linux devices reporting 3.0.0; group prod wants 3.0.1."""
    devices = linux_devices("srv", 6)
    root = write_repo(
        tmp_path / "repo",
        devices,
        {
            "prod": {
                "match": {"platform": "linux"},
                "agent": {"release": "3.0.1"},
                "rollout": {"waves": [50, 100]},
            }
        },
    )
    now = datetime.now(UTC)
    with Store.open(f"sqlite:///{root / '.engine' / 'state.db'}") as store:
        store.upsert_reports([report(d, "3.0.0", now) for d in devices])
    return root


def _rollout_count(root: Path) -> int:
    with Store.open(f"sqlite:///{root / '.engine' / 'state.db'}") as store, store.read() as conn:
        return int(conn.exec_driver_sql("SELECT count(*) FROM rollouts").scalar_one())


def test_apply_refuses_stale_plan(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A saved plan whose reports changed since is refused with the reason; nothing recorded."""
    plan = repo / "plan.json"
    assert main(["plan", "-C", str(repo), "--out", str(plan)]) == 0
    with Store.open(f"sqlite:///{repo / '.engine' / 'state.db'}") as store:
        store.upsert_reports([report("srv-0000", "3.0.1", datetime.now(UTC), "committed")])
    capsys.readouterr()
    assert main(["apply", str(plan), "--yes"]) == 1
    err = capsys.readouterr().err
    assert "stale" in err and "device reports changed" in err and "engine plan" in err
    assert _rollout_count(repo) == 0


def test_apply_refuses_plan_of_changed_repo(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A saved plan made before the inventory changed is refused; nothing recorded."""
    plan = repo / "plan.json"
    assert main(["plan", "-C", str(repo), "--out", str(plan)]) == 0
    (repo / "inventory" / "more.yaml").write_text("devices:\n  extra-1: {platform: linux}\n")
    capsys.readouterr()
    assert main(["apply", str(plan), "--yes"]) == 1
    assert "operator repo changed" in capsys.readouterr().err
    assert _rollout_count(repo) == 0


def test_apply_without_yes_needs_a_terminal(
    repo: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --yes and no terminal to ask on, apply refuses with a hint and records nothing."""
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    assert main(["apply", "-C", str(repo)]) == 1
    assert "--yes" in capsys.readouterr().err
    assert _rollout_count(repo) == 0


def test_apply_saved_plan_records_rollouts_and_status_json(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """apply --yes records one rollout; status --json shows its waves and the fleet's versions."""
    plan = repo / "plan.json"
    assert main(["plan", "-C", str(repo), "--out", str(plan)]) == 0
    assert main(["apply", str(plan), "--yes"]) == 0
    out = capsys.readouterr().out
    assert "Recorded rollout #1 prod@3.0.1: 6 devices (6 to move" in out
    assert _rollout_count(repo) == 1
    assert main(["status", "-C", str(repo), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == {"generated_at", "rollouts", "versions", "devices_reporting", "performance"}
    assert doc["versions"] == {"3.0.0": 6}
    (rollout,) = doc["rollouts"]
    assert (rollout["id"], rollout["name"], rollout["state"]) == (1, "prod@3.0.1", "active")
    assert [w["index"] for w in rollout["waves"]] == [0, 1]
    keys = {"pending", "in_progress", "succeeded", "failed", "rolled_back", "offline", "excluded"}
    assert keys <= set(rollout["waves"][0])
    assert sum(w["pending"] for w in rollout["waves"]) == 6
    assert rollout["totals"]["pending"] == 6
    # Applying the same plan again records nothing new.
    assert main(["apply", "-C", str(repo), "--yes"]) == 0
    assert "already moves group prod" in capsys.readouterr().out
    assert _rollout_count(repo) == 1


def test_rollout_pause_resume_abort(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """pause, resume and abort change the state; resuming an aborted rollout is refused."""
    assert main(["apply", "-C", str(repo), "--yes"]) == 0
    for action, state in (("pause", "paused"), ("resume", "active"), ("abort", "aborted")):
        assert main(["rollout", action, "prod@3.0.1", "-C", str(repo)]) == 0
        assert main(["status", "-C", str(repo), "--json", "--rollout", "1"]) == 0
        out = capsys.readouterr().out
        assert json.loads(out[out.index("{") :])["rollouts"][0]["state"] == state
    assert main(["rollout", "resume", "1", "-C", str(repo)]) == 1
    assert "aborted" in capsys.readouterr().err
    assert main(["rollout", "pause", "99", "-C", str(repo)]) == 1
    assert "no rollout" in capsys.readouterr().err


def test_apply_wait_ends_when_rollout_settles(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """apply --wait follows the rollout and exits 1 with a summary when it is paused."""
    import threading

    from engine.rollouts import pause_rollout

    def pause_when_recorded() -> None:
        with Store.open(f"sqlite:///{repo / '.engine' / 'state.db'}") as store:
            for _ in range(200):
                with store.write() as conn:
                    if conn.exec_driver_sql("SELECT count(*) FROM rollouts").scalar_one():
                        pause_rollout(conn, 1, datetime.now(UTC))
                        return
                threading.Event().wait(0.05)

    thread = threading.Thread(target=pause_when_recorded)
    thread.start()
    try:
        assert main(["apply", "-C", str(repo), "--yes", "--wait", "--poll", "0.05"]) == 1
    finally:
        thread.join(15)
    out = capsys.readouterr().out
    assert "#1 prod@3.0.1: paused" in out
