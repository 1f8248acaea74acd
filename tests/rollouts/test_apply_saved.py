"""`engine apply PLAN.json` on a live fleet: bound to the desired state, drift shown, --strict."""

from __future__ import annotations

import io
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from engine.cli import main
from engine.store import Store
from engine.store.schema import reports
from fleetbase.version import Version
from states.report import Report
from tests.bundles import RuntimeBundle
from tests.rollouts.fleet import linux_devices, write_repo

GROUPS = {
    "prod": {
        "match": {"platform": "linux"},
        "agent": {"release": "3.0.1"},
        "rollout": {"waves": [50, 100]},
    }
}


def _report(device: str, version: str, seen: datetime) -> Report:
    return Report(
        device=device,
        agent_version=Version(version),
        platform="linux",  # type: ignore[arg-type]
        last_seen=seen,
        last_result="committed",
        runtime_version="0.1.0",
    )


def _url(root: Path) -> str:
    return f"sqlite:///{root / '.engine' / 'state.db'}"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """Six linux devices, five reporting 3.0.0 (srv-0005 silent so far); prod wants 3.0.1."""
    root = write_repo(tmp_path / "repo", linux_devices("srv", 6), GROUPS)
    (root / "engine.yaml").write_text("stale_after: 1h\n")
    now = datetime.now(UTC)
    with Store.open(_url(root)) as store:
        store.upsert_reports([_report(f"srv-{i:04d}", "3.0.0", now) for i in range(5)])
    return root


def _drift_reports(root: Path) -> None:
    """srv-0000 moves to 3.0.1, srv-0005 reports for the first time, srv-0001 goes silent."""
    now = datetime.now(UTC)
    with Store.open(_url(root)) as store:
        store.upsert_reports(
            [
                _report("srv-0000", "3.0.1", now + timedelta(seconds=1)),
                _report("srv-0005", "3.0.0", now + timedelta(seconds=1)),
            ]
        )
        with store.write() as conn:  # the store keeps the newest report: age this one by hand
            conn.execute(
                update(reports)
                .where(reports.c.device == "srv-0001")
                .values(last_seen=now - timedelta(hours=2))
            )


def _rollouts(root: Path) -> int:
    with Store.open(_url(root)) as store, store.read() as conn:
        return int(conn.exec_driver_sql("SELECT count(*) FROM rollouts").scalar_one())


def test_saved_plan_applies_after_new_reports_and_shows_the_drift(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Reports that arrived since the plan do not stale it: apply records it and lists the drift."""
    plan = repo / "plan.json"
    assert main(["plan", "-C", str(repo), "--out", str(plan)]) == 0
    _drift_reports(repo)
    capsys.readouterr()
    assert main(["apply", str(plan), "--yes", "--allow-unsigned"]) == 0
    out = capsys.readouterr().out
    assert "Drift since the plan: 1 moved, 1 silent, 1 appeared; 3 would now be planned" in out
    assert "  ~ srv-0000 moved 3.0.0 -> 3.0.1 (plan: update 3.0.1, now: noop 3.0.1)" in out
    assert "  ~ srv-0001 silent (plan: update 3.0.1, now: blocked 3.0.1)" in out
    assert "  ~ srv-0005 appeared none -> 3.0.0 (plan: blocked 3.0.1, now: update 3.0.1)" in out
    assert "Recorded rollout #1 prod@3.0.1" in out
    assert _rollouts(repo) == 1


def test_saved_plan_without_drift_says_so(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A saved plan applied with no report since says there is no drift."""
    plan = repo / "plan.json"
    assert main(["plan", "-C", str(repo), "--out", str(plan)]) == 0
    assert main(["apply", str(plan), "--yes", "--allow-unsigned"]) == 0
    out = capsys.readouterr().out
    assert "No drift: the devices report what they reported when the plan was made." in out


def test_strict_refuses_drift_that_changes_the_plan(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--strict exits 3 when drift changes what the plan does to a device; nothing recorded."""
    plan = repo / "plan.json"
    assert main(["plan", "-C", str(repo), "--out", str(plan)]) == 0
    _drift_reports(repo)
    capsys.readouterr()
    assert main(["apply", str(plan), "--yes", "--allow-unsigned", "--strict"]) == 3
    captured = capsys.readouterr()
    assert (
        "engine apply: --strict: 3 device(s) drifted since the plan in a way that changes "
        "what it does; nothing applied." in captured.err
    )
    assert "srv-0000 moved" in captured.out
    assert _rollouts(repo) == 0


def test_edit_after_plan_names_the_changed_file(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An inventory edit after the plan: apply refuses, naming the file that changed."""
    plan = repo / "plan.json"
    assert main(["plan", "-C", str(repo), "--out", str(plan)]) == 0
    fleet = repo / "inventory" / "fleet.yaml"
    fleet.write_text(fleet.read_text() + "# reviewed\n")
    capsys.readouterr()
    assert main(["apply", str(plan), "--yes", "--allow-unsigned"]) == 1
    err = capsys.readouterr().err
    assert "the operator repo changed since the plan was made: inventory/fleet.yaml changed" in err
    assert _rollouts(repo) == 0


def test_apply_json_is_one_document(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """apply --json --yes prints one JSON document with the drift and the rollouts recorded."""
    plan = repo / "plan.json"
    assert main(["plan", "-C", str(repo), "--out", str(plan)]) == 0
    _drift_reports(repo)
    capsys.readouterr()
    assert main(["apply", str(plan), "--yes", "--allow-unsigned", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["applied"] is True and doc["exit_code"] == 0
    assert [(d["device"], d["kind"]) for d in doc["drift"]] == [
        ("srv-0000", "moved"),
        ("srv-0001", "silent"),
        ("srv-0005", "appeared"),
    ]
    assert [r["name"] for r in doc["rollouts"]] == ["prod@3.0.1"]


def test_apply_json_error_is_a_document(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A refused apply with --json still prints one JSON document naming the error."""
    plan = repo / "plan.json"
    assert main(["plan", "-C", str(repo), "--out", str(plan)]) == 0
    (repo / "engine.yaml").write_text("stale_after: 2h\n")
    capsys.readouterr()
    assert main(["apply", str(plan), "--yes", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["applied"] is False and doc["exit_code"] == 1
    assert doc["reasons"] == [
        "the operator repo changed since the plan was made: engine.yaml changed"
    ]


def test_unsigned_release_is_refused(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """apply refuses to record a rollout of an unsigned release without --allow-unsigned."""
    assert main(["apply", "-C", str(repo), "--yes"]) == 1
    assert (
        "engine apply: release 3.0.1 has no signature (releases/<version>.yaml.sig) and devices "
        "refuse unsigned releases; nothing applied. Sign it with `engine release sign "
        "releases/3.0.1.yaml`, or pass --allow-unsigned to record it anyway."
    ) in capsys.readouterr().err
    assert _rollouts(repo) == 0


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_declining_the_confirmation_exits_1(
    repo: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Answering n at the prompt records nothing and exits 1."""
    monkeypatch.setattr("sys.stdin", _Terminal("n\n"))
    assert main(["apply", "-C", str(repo), "--allow-unsigned"]) == 1
    assert "Apply cancelled; nothing recorded." in capsys.readouterr().err
    assert _rollouts(repo) == 0


def test_wait_prints_one_line_per_change_without_a_terminal(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """apply --wait in a log prints a timestamped line when a rollout changes, then a summary."""
    from threading import Event, Thread

    from engine.rollouts import pause_rollout

    def pause_when_recorded() -> None:
        with Store.open(_url(repo)) as store:
            for _ in range(400):
                with store.write() as conn:
                    if conn.exec_driver_sql("SELECT count(*) FROM rollouts").scalar_one():
                        pause_rollout(conn, 1, datetime.now(UTC))
                        return
                Event().wait(0.05)

    thread = Thread(target=pause_when_recorded)
    thread.start()
    try:
        code = main(
            ["apply", "-C", str(repo), "--yes", "--allow-unsigned", "--wait", "--poll", "0.05"]
        )
    finally:
        thread.join(30)
    assert code == 1
    out = capsys.readouterr().out
    lines = re.findall(r"^\d\d:\d\d:\d\d #1 prod@3\.0\.1: (\w+), wave 1/2", out, re.M)
    assert lines and lines[-1] == "paused"


def test_a_runtime_release_made_after_the_plan_stales_it(
    repo: Path, runtime_bundle: RuntimeBundle, capsys: pytest.CaptureFixture[str]
) -> None:
    """runtime-releases/ is desired state like releases/: a runtime release made (by the real
    `engine runtime release`) after `plan --out` makes apply refuse the saved plan, naming the
    bundle's manifest; nothing is recorded. A fresh plan applies."""
    (repo / "keys").mkdir()
    (repo / "keys" / "bundle.pub").write_text(runtime_bundle.public_key + "\n")
    with (repo / "engine.yaml").open("a") as f:
        f.write("trusted_keys: [keys/bundle.pub]\n")
    saved = repo / "plan.json"
    assert main(["plan", "-C", str(repo), "--out", str(saved)]) == 0
    capsys.readouterr()
    made = main(["runtime", "release", "-C", str(repo), "--from", str(runtime_bundle.root)])
    assert made == 0, capsys.readouterr().err
    version = json.loads((runtime_bundle.directory / "bundle.json").read_text())["runtime_version"]
    capsys.readouterr()
    assert main(["apply", str(saved), "--yes", "--allow-unsigned"]) == 1
    err = capsys.readouterr().err
    assert (
        "the operator repo changed since the plan was made: "
        f"runtime-releases/{version}/{runtime_bundle.target}/bundle.json was added"
    ) in err, err
    assert _rollouts(repo) == 0
    # a fresh plan, then the release's bundle manifest rewritten (replaced by hand): stale again
    assert main(["plan", "-C", str(repo), "--out", str(saved)]) == 0
    manifest = repo / "runtime-releases" / version / runtime_bundle.target / "bundle.json"
    manifest.write_text(json.dumps(json.loads(manifest.read_text()), indent=4))
    capsys.readouterr()
    assert main(["apply", str(saved), "--yes", "--allow-unsigned"]) == 1
    assert f"runtime-releases/{version}/{runtime_bundle.target}/bundle.json changed" in (
        capsys.readouterr().err
    )
    assert _rollouts(repo) == 0
    assert main(["plan", "-C", str(repo), "--out", str(saved)]) == 0
    capsys.readouterr()
    assert main(["apply", str(saved), "--yes", "--allow-unsigned"]) == 0, capsys.readouterr().err
    assert _rollouts(repo) == 1


def test_a_runtime_that_can_update_itself_since_the_plan_is_drift(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """srv-0000's runtime was blocked from runtime 0.2.0 (no supervisor); reinstalled under
    the supervisor, it says so: the runtime plan would now move it (`changed`, same version),
    and --strict refuses the saved plan that excluded it."""
    groups = {"prod": {**GROUPS["prod"], "agent": {"release": "3.0.0"},
                       "runtime": {"release": "0.2.0"}}}  # fmt: skip
    root = write_repo(tmp_path / "repo", linux_devices("srv", 2), groups)
    target = root / "runtime-releases" / "0.2.0" / "linux-x86_64-py3.11"
    target.mkdir(parents=True)
    (target / "bundle.json").write_text("{}\n")
    now = datetime.now(UTC)
    unable, able = ("config",), ("config", "runtime_update")
    with Store.open(_url(root)) as store:
        store.upsert_reports(
            [
                _report("srv-0000", "3.0.0", now).model_copy(update={"features": unable}),
                _report("srv-0001", "3.0.0", now).model_copy(update={"features": able}),
            ]
        )
    plan = root / "plan.json"
    assert main(["plan", "-C", str(root), "--out", str(plan)]) == 0
    with Store.open(_url(root)) as store:
        store.upsert_reports(
            [_report("srv-0000", "3.0.0", now + timedelta(seconds=1)).model_copy(
                update={"features": able})]
        )  # fmt: skip
    capsys.readouterr()
    assert main(["apply", str(plan), "--yes", "--allow-unsigned", "--strict"]) == 3
    out = capsys.readouterr().out
    assert "  ~ srv-0000 runtime changed (plan: blocked 0.2.0, now: update 0.2.0)" in out
    assert "srv-0001" not in out
    assert _rollouts(root) == 0
    assert main(["apply", str(plan), "--yes", "--allow-unsigned", "--json"]) == 0
    (drift,) = json.loads(capsys.readouterr().out)["drift"]
    assert (drift["device"], drift["component"], drift["kind"]) == (
        "srv-0000",
        "runtime",
        "changed",
    )
