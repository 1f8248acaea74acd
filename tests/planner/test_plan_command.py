"""`engine plan` end to end: real operator repos on disk, a real SQLite store, real git."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import main
from engine.plan_io import PlanFileError, check_plan_fresh, read_plan, write_plan
from engine.store import Store
from inventory.loader import load_operator_repo
from states.report import Report

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fleet"
REPO_ROOT = Path(__file__).resolve().parents[2]


def _copy_example(tmp_path: Path) -> Path:
    root = tmp_path / "fleet"
    root.mkdir()
    shutil.copy(EXAMPLE / "engine.yaml", root / "engine.yaml")
    shutil.copy(EXAMPLE / "channels.yaml", root / "channels.yaml")
    shutil.copytree(EXAMPLE / "inventory", root / "inventory")
    shutil.copytree(EXAMPLE / "releases", root / "releases")
    shutil.copytree(EXAMPLE / "artifacts", root / "artifacts")
    return root


def _state(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'state.db'}"


def _import(url: str, reports: list[dict[str, object]]) -> None:
    with Store.open(url) as store:
        store.import_reports(Report.model_validate(r) for r in reports)


def _example_reports() -> list[dict[str, object]]:
    data: list[dict[str, object]] = json.loads((EXAMPLE / "reports.json").read_text())
    return data


@pytest.fixture
def fleet(tmp_path: Path) -> tuple[Path, str]:
    """The example operator repo copied to tmp_path, with its reports in a fresh store."""
    root = _copy_example(tmp_path)
    url = _state(tmp_path)
    _import(url, _example_reports())
    return root, url


def _git(root: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args],
        cwd=root,
        check=True,
        capture_output=True,
    )


def test_changes_exit_2_with_detailed_exitcode(
    fleet: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """With devices to update, --detailed-exitcode exits 2 and the summary names every action."""
    root, url = fleet
    rc = main(["plan", "-C", str(root), "--state", url, "--detailed-exitcode"])
    out = capsys.readouterr().out
    assert rc == 2
    assert out.startswith(
        "Plan: 36 to update, 1 to install, 1 to adopt, 1 to roll back, 4 unchanged, 1 pinned, "
        "3 blocked; 1 unmanaged."
    )
    assert "< berlin-srv-0003" in out
    assert "= hamburg-srv-0002" in out
    assert "\x1b[" not in out  # not a terminal: no colour


def test_changes_exit_0_without_detailed_exitcode(
    fleet: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --detailed-exitcode a successful plan exits 0 even when devices change."""
    root, url = fleet
    assert main(["plan", "-C", str(root), "--state", url]) == 0


def test_no_changes_exit_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """When every device already runs its release, --detailed-exitcode exits 0."""
    root = _copy_example(tmp_path)
    url = _state(tmp_path)
    repo = load_operator_repo(root)
    reports: list[dict[str, object]] = []
    for device_id, device in repo.inventory.devices.items():
        version = device.pin or (
            repo.inventory.groups[repo.assignment[device_id]].agent.release  # type: ignore[union-attr]
            if device_id in repo.assignment
            else None
        )
        reports.append(
            {
                "device": device_id,
                "agent_version": str(version) if version else None,
                "platform": device.platform.value,
                "last_seen": "2026-11-20T10:00:00Z",
                "runtime_version": "0.1.0",
            }
        )
    _import(url, reports)
    rc = main(["plan", "-C", str(root), "--state", url, "--detailed-exitcode"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "0 to update, 0 to install, 0 to roll back" in out


def test_invalid_inventory_exits_1_and_writes_nothing(
    fleet: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A broken inventory exits 1 with file:line problems on stderr and saves no plan."""
    root, url = fleet
    bad = root / "inventory" / "hamburg.yaml"
    bad.write_text(bad.read_text().replace("platform: linux, site: hamburg", "platfrom: linux"))
    out_file = root / "plan.json"
    rc = main(
        ["plan", "-C", str(root), "--state", url, "--detailed-exitcode", "--out", str(out_file)]
    )
    captured = capsys.readouterr()
    assert rc == 1
    assert "inventory/hamburg.yaml:" in captured.err
    assert "platfrom" in captured.err
    assert captured.out == ""
    assert not out_file.exists()


def test_unknown_group_or_device_exits_1(
    fleet: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """--group or --device naming nothing in the inventory is an error, not an empty plan."""
    root, url = fleet
    assert main(["plan", "-C", str(root), "--state", url, "--group", "nope"]) == 1
    assert "--group nope: no such group" in capsys.readouterr().err
    assert main(["plan", "-C", str(root), "--state", url, "--device", "nope"]) == 1
    assert "--device nope: no such device" in capsys.readouterr().err


def test_filters(fleet: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    """--group and --device restrict the JSON plan to that group or device."""
    root, url = fleet
    assert main(["plan", "-C", str(root), "--state", url, "--json", "--group", "macos-prod"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert {d["group"] for d in plan["devices"]} == {"macos-prod"}
    assert len(plan["devices"]) == 6
    assert [r["id"] for r in plan["rollouts"]] == ["macos-prod@3.0.1"]
    assert main(["plan", "-C", str(root), "--state", url, "--json", "--device", "spare-0001"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["devices"] == []
    assert plan["unmanaged"] == ["spare-0001"]


def test_json_stdout_is_one_document(fleet: tuple[Path, str], tmp_path: Path) -> None:
    """`engine plan --json` in a real process prints exactly one JSON document on stdout."""
    root, url = fleet
    out_file = tmp_path / "saved.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine",
            "plan",
            "-C",
            str(root),
            "--state",
            url,
            "--json",
            "--out",
            str(out_file),
            "--detailed-exitcode",
        ],
        capture_output=True,
        cwd=REPO_ROOT,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    document = json.loads(proc.stdout)
    assert document["format_version"] == 1
    assert document["summary"]["update"] == 36
    assert json.loads(out_file.read_text()) == document
    by_device = {d["device"]: d for d in document["devices"]}
    assert by_device["hamburg-mac-0002"]["action"] == "install"
    assert by_device["hamburg-pos-0008"]["reason"] == "no report since 2015-03-01T09:30Z"
    assert document["releases"]["3.0.1"]["manifest"] == "releases/3.0.1.yaml"


def test_saved_plan_records_inputs(
    fleet: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A saved plan records the inventory digest, git commit and dirtiness, and the state."""
    root, url = fleet
    (root / ".gitignore").write_text("plan.json\n")
    _git(root, "init", "-q")
    _git(root, "add", ".")
    _git(root, "commit", "-q", "-m", "fleet")
    out_file = root / "plan.json"
    assert main(["plan", "-C", str(root), "--state", url, "--out", str(out_file)]) == 0
    plan = read_plan(out_file)
    repo = load_operator_repo(root)
    assert plan.inventory.digest == repo.digest
    assert plan.inventory.git_commit is not None and len(plan.inventory.git_commit) == 40
    assert plan.inventory.git_dirty is False
    assert plan.state.url == url
    assert plan.state.reports == 48
    assert plan.state.latest_report is not None
    assert plan.state.latest_report.isoformat() == "2026-11-26T23:56:00+00:00"
    assert [p.name for p in root.iterdir() if p.name.startswith(".plan.json")] == []

    (root / "inventory" / "berlin.yaml").write_text(
        (root / "inventory" / "berlin.yaml").read_text() + "\n"
    )
    assert main(["plan", "-C", str(root), "--state", url, "--out", str(out_file)]) == 0
    assert read_plan(out_file).inventory.git_dirty is True


def test_plan_outside_git_has_no_commit(
    fleet: tuple[Path, str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Outside a git work tree the plan records no commit instead of failing."""
    root, url = fleet
    out_file = tmp_path / "p.json"
    assert main(["plan", "-C", str(root), "--state", url, "--out", str(out_file)]) == 0
    plan = read_plan(out_file)
    assert (plan.inventory.git_commit, plan.inventory.git_dirty) == (None, None)


def test_staleness_detection(fleet: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    """A saved plan stays fresh when new reports arrive, and is stale once an inventory file is
    edited, naming it."""
    root, url = fleet
    out_file = root.parent / "plan.json"
    assert main(["plan", "-C", str(root), "--state", url, "--out", str(out_file)]) == 0
    plan = read_plan(out_file)
    with Store.open(url) as store:
        assert check_plan_fresh(plan, load_operator_repo(root), store) == []

    _import(
        url,
        [
            {
                "device": "berlin-pos-0001",
                "agent_version": "3.0.1",
                "platform": "windows",
                "last_seen": "2026-11-27T08:00:00Z",
            }
        ],
    )
    with Store.open(url) as store:
        reasons = check_plan_fresh(plan, load_operator_repo(root), store)
    assert reasons == [], reasons

    groups = root / "inventory" / "groups.yaml"
    groups.write_text(groups.read_text() + "# reviewed\n")
    with Store.open(url) as store:
        reasons = check_plan_fresh(plan, load_operator_repo(root), store)
    assert reasons == [
        "the operator repo changed since the plan was made: inventory/groups.yaml changed"
    ], reasons


def test_read_plan_refuses_bad_files(tmp_path: Path) -> None:
    """read_plan names the file for missing, non-JSON, non-plan and newer-format input."""
    missing = tmp_path / "missing.json"
    with pytest.raises(PlanFileError, match=r"missing\.json"):
        read_plan(missing)
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    with pytest.raises(PlanFileError, match="not a JSON document"):
        read_plan(garbage)
    other = tmp_path / "other.json"
    other.write_text('{"hello": 1}')
    with pytest.raises(PlanFileError, match="not a plan"):
        read_plan(other)
    newer = tmp_path / "newer.json"
    newer.write_text('{"format_version": 99}')
    with pytest.raises(PlanFileError, match="newer than this engine"):
        read_plan(newer)
    broken = tmp_path / "broken.json"
    broken.write_text('{"format_version": 1, "devices": "x"}')
    with pytest.raises(PlanFileError, match=r"broken\.json"):
        read_plan(broken)


def test_write_plan_into_missing_directory_fails_cleanly(
    fleet: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Saving into a missing directory is an error naming the path; nothing is written."""
    root, url = fleet
    target = tmp_path / "nowhere" / "plan.json"
    rc = main(["plan", "-C", str(root), "--state", url, "--out", str(target)])
    assert rc == 1
    assert "cannot write the plan" in capsys.readouterr().err
    assert not target.parent.exists()
    ok = tmp_path / "ok.json"
    main(["plan", "-C", str(root), "--state", url, "--out", str(ok)])
    capsys.readouterr()
    write_plan(read_plan(ok), ok)
    assert read_plan(ok).summary["update"] == 36
