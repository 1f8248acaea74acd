"""Real updates with the example agent: swap, restart, heartbeat, no-op, rollback, cap, adoption."""

from __future__ import annotations

import json
import platform
import shutil
import signal
import subprocess

import pytest

from tests.harness.sandbox import Sandbox
from tests.runtime.conftest import MakeSandbox

LAYOUTS = [
    pytest.param({"layout": "in_place"}, id="in_place"),
    pytest.param({"layout": "versioned"}, id="versioned-symlink"),
    pytest.param({"layout": "versioned", "pointer": "file"}, id="versioned-pointer-file"),
]


def _installed(sb: Sandbox, version: str) -> int:
    """Install ``version`` from nothing through the CLI; the agent's pid."""
    sb.write_plan(version)
    run = sb.converge()
    assert run.returncode == 0, run.stdout + run.stderr
    assert sb.assert_consistent() == version
    pid = sb.agent_pid()
    assert pid is not None
    return pid


@pytest.mark.parametrize("opts", LAYOUTS)
def test_update_swaps_restarts_confirms_and_rerun_is_noop(
    make_sandbox: MakeSandbox, opts: dict[str, str]
) -> None:
    """3.0.0 -> 3.0.1 swaps files, restarts, confirms; converging again restarts nothing."""
    sb = make_sandbox(**opts)
    for v in ("3.0.0", "3.0.1"):
        sb.publish(v)
    old_pid = _installed(sb, "3.0.0")
    sb.write_plan("3.0.1", "3.0.0")
    run = sb.converge()
    assert run.returncode == 0, run.stdout + run.stderr
    for phase in ("DOWNLOAD", "VERIFY", "BACKUP", "SWAP", "RESTART", "CONFIRM", "COMMIT"):
        assert phase in run.stdout
    assert sb.assert_consistent() == "3.0.1"
    new_pid = sb.agent_pid()
    assert new_pid != old_pid
    state = sb.state_json()
    assert (state["known_good"], state["previous"], state["last_result"]) == (
        "3.0.1",
        "3.0.0",
        "committed",
    )
    assert state["highest_serial"] == 2
    assert sb.staging_entries() == []
    before = sb.snapshot()
    again = sb.converge()
    assert again.returncode == 0, again.stdout + again.stderr
    assert "noop" in again.stdout and "SWAP" not in again.stdout
    assert sb.agent_pid() == new_pid
    assert sb.snapshot() == before
    assert sb.state_json()["last_result"] == "noop"


@pytest.mark.parametrize(
    ("opts", "broken"),
    [
        pytest.param({"layout": "in_place"}, "3.0.2", id="in_place-exits-at-start"),
        pytest.param({"layout": "in_place"}, "3.0.3", id="in_place-never-heartbeats"),
        pytest.param({"layout": "versioned"}, "3.0.2", id="versioned-exits-at-start"),
        pytest.param({"layout": "versioned"}, "3.0.3", id="versioned-never-heartbeats"),
    ],
)
@pytest.mark.slow
def test_broken_release_rolls_back_and_is_not_retried_past_the_cap(
    make_sandbox: MakeSandbox, opts: dict[str, str], broken: str
) -> None:
    """A release that dies or never heartbeats ends back on 3.0.1, rolled_back, capped."""
    sb = make_sandbox(max_attempts=2, **opts)
    for v in ("3.0.1", broken):
        sb.publish(v)
    _installed(sb, "3.0.1")
    sb.write_plan(broken, "3.0.1")
    for attempt in (1, 2):
        run = sb.converge()
        assert run.returncode == 1, run.stdout + run.stderr
        assert "ROLLBACK_CONFIRM" in run.stdout
        assert sb.assert_consistent() == "3.0.1"
        state = sb.state_json()
        assert state["last_result"] == "rolled_back"
        assert state["attempts"] == {broken: attempt}
        assert state["known_good"] == "3.0.1"
    pid = sb.agent_pid()
    files = sb.snapshot()
    capped = sb.converge()
    assert capped.returncode == 1
    assert "not retried" in capped.stdout and "DOWNLOAD" not in capped.stdout
    assert sb.state_json()["last_result"] == "failed"
    assert sb.agent_pid() == pid and sb.snapshot() == files
    # a new desired release resets the count
    sb.write_plan("3.0.1", "3.0.1")
    assert sb.converge().returncode == 0
    assert sb.state_json()["attempts"] == {}


@pytest.mark.parametrize("aside", [False, True], ids=["plain", "rename-aside"])
def test_in_place_removes_dropped_files_and_restores_them_on_rollback(
    make_sandbox: MakeSandbox, aside: bool
) -> None:
    """A file only the old release has is removed by the swap and back after a rollback."""
    sb = make_sandbox(layout="in_place", rename_aside=aside)
    sb.publish("3.0.0", extra_files={"core/legacy.py": b"LEGACY = True\n"})
    sb.publish("3.0.2")
    sb.publish("3.0.1")
    _installed(sb, "3.0.0")
    assert (sb.root / "core/legacy.py").exists()
    sb.write_plan("3.0.2", "3.0.0")
    assert sb.converge().returncode == 1
    assert sb.assert_consistent() == "3.0.0"
    assert (sb.root / "core/legacy.py").read_bytes() == b"LEGACY = True\n"
    assert not list(sb.root.rglob("*.old"))
    sb.write_plan("3.0.1", "3.0.0")
    assert sb.converge().returncode == 0
    assert sb.assert_consistent() == "3.0.1"
    assert not (sb.root / "core/legacy.py").exists()
    assert not list(sb.root.rglob("*.old"))
    backup = json.loads((sb.root / "backup/3.0.0/index.json").read_text())
    assert "core/legacy.py" in backup["present"]


def test_adopts_a_field_install_by_configured_version(make_sandbox: MakeSandbox) -> None:
    """Files of 3.0.0 in the agent root without runtime state are adopted and updated."""
    sb = make_sandbox(layout="in_place", installed_version="3.0.0")
    pub = sb.publish("3.0.0")
    sb.publish("3.0.1")
    for rel, data in pub.files.items():
        (sb.root / rel).parent.mkdir(parents=True, exist_ok=True)
        (sb.root / rel).write_bytes(data)
    sb.write_plan("3.0.1", None)
    run = sb.converge()
    assert run.returncode == 0, run.stdout + run.stderr
    assert "adopted" in run.stdout
    assert sb.assert_consistent() == "3.0.1"
    assert sb.state_json()["previous"] == "3.0.0"
    assert (sb.root / "backup/3.0.0/files/nats_agent.py").read_bytes() == pub.files["nats_agent.py"]


def test_refuses_to_adopt_an_install_of_unknown_version(make_sandbox: MakeSandbox) -> None:
    """Files in the agent root, no state, no version anywhere: nothing is touched."""
    sb = make_sandbox(layout="in_place")
    pub = sb.publish("3.0.0")
    sb.publish("3.0.1")
    (sb.root / "nats_agent.py").write_bytes(pub.files["nats_agent.py"])
    sb.write_plan("3.0.1", None)
    run = sb.converge()
    assert run.returncode == 1
    assert "installed_version" in run.stdout
    assert sb.snapshot() == {"nats_agent.py": sb.snapshot()["nats_agent.py"]}
    assert sb.agent_pid() is None


def test_adopted_install_equal_to_desired_is_verified_and_kept(make_sandbox: MakeSandbox) -> None:
    """An adopted install that already is the desired release is verified, not reinstalled."""
    sb = make_sandbox(layout="in_place")
    pub = sb.publish("3.0.1")
    for rel, data in pub.files.items():
        (sb.root / rel).parent.mkdir(parents=True, exist_ok=True)
        (sb.root / rel).write_bytes(data)
    sb.write_plan("3.0.1", "3.0.1")
    run = sb.converge()
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SWAP" not in run.stdout and "noop" in run.stdout
    assert sb.assert_consistent() == "3.0.1"
    assert sb.state_json()["adopted_from"] == "plan"


@pytest.mark.parametrize("opts", LAYOUTS[:2])
def test_rollback_command_restores_previous_and_holds_it(
    make_sandbox: MakeSandbox, opts: dict[str, str]
) -> None:
    """`agent-runtime rollback` restores the previous release locally; converge won't redo it."""
    sb = make_sandbox(**opts)
    for v in ("3.0.0", "3.0.1"):
        sb.publish(v)
    _installed(sb, "3.0.0")
    sb.write_plan("3.0.1", "3.0.0")
    assert sb.converge().returncode == 0
    shutil.rmtree(sb.repo / "artifacts")  # proves the restore is local
    run = sb.cli("rollback")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "rolled_back" in run.stdout
    assert sb.assert_consistent() == "3.0.0"
    again = sb.converge()
    assert again.returncode == 1 and "not retried" in again.stdout
    assert sb.assert_consistent() == "3.0.0"


def test_status_reports_versions_journal_and_attempts(make_sandbox: MakeSandbox) -> None:
    """`agent-runtime status --json` shows installed, known-good, journal and last result."""
    sb = make_sandbox(layout="in_place")
    sb.publish("3.0.0")
    _installed(sb, "3.0.0")
    run = sb.cli("status", "--json")
    assert run.returncode == 0, run.stderr
    status = json.loads(run.stdout)
    assert status["installed"] == "3.0.0" and status["known_good"] == "3.0.0"
    assert status["journal"]["state"] == "closed" and status["journal"]["phase"] == "DONE"
    assert status["last_result"] == "committed" and status["attempts"] == {"3.0.0": 1}
    assert status["agent_running"] is True
    assert status["facts"]["python_version"] == platform.python_version()
    assert status["facts"]["components"]["openssl"]  # this Python links OpenSSL
    text = sb.cli("status")
    assert "known-good:  3.0.0" in text.stdout
    assert f"facts:       python {platform.python_version()}, os " in text.stdout


def test_bad_config_and_missing_device_exit_2(make_sandbox: MakeSandbox) -> None:
    """A config with an unknown key, or a plan without this device, exits 2 with the reason."""
    sb = make_sandbox(layout="in_place")
    sb.publish("3.0.0")
    sb.write_plan("3.0.0")
    sb.write_config(max_attempt=3)
    run = sb.converge()
    assert run.returncode == 2
    assert "max_attempt: unknown key" in run.stderr and "device.yaml:" in run.stderr
    sb.write_config()
    sb.plan_path.write_text(sb.plan_path.read_text().replace("test-device-01", "other"))
    run = sb.converge()
    assert run.returncode == 2 and "no entry for device" in run.stderr


def test_crash_loop_is_broken_by_the_recovery_counter(make_sandbox: MakeSandbox) -> None:
    """A journal recovered too often is closed as a state loop instead of looping forever."""
    sb = make_sandbox(layout="in_place")
    for v in ("3.0.0", "3.0.1"):
        sb.publish(v)
    pid = _installed(sb, "3.0.0")
    sb.write_plan("3.0.1", "3.0.0")
    assert sb.converge(fault="before:SWAP=kill").returncode < 0
    journal_path = sb.state / "journal.json"
    journal = json.loads(journal_path.read_text())
    journal["recoveries"] = 5
    journal_path.write_text(json.dumps(journal))
    run = sb.converge()
    assert run.returncode == 1 and "state loop detected" in run.stdout
    assert sb.journal_json()["phase"] == "FAILED"  # type: ignore[index]
    assert sb.agent_pid() == pid and sb.assert_consistent() == "3.0.0"


def test_periodic_converge_runs_and_stops_on_sigterm(make_sandbox: MakeSandbox) -> None:
    """Without --once the runtime converges, waits for the next round, and exits on SIGTERM."""
    sb = make_sandbox(layout="in_place")
    sb.publish("3.0.0")
    sb.write_config(converge={"interval": "1h", "jitter": "1s"})
    sb.write_plan("3.0.0")
    proc = subprocess.Popen(
        sb.cli_argv("converge", "--plan", str(sb.plan_path)),
        env=sb.cli_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("next converge"):
                break
        assert any("result: committed" in x for x in lines), lines
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
    assert sb.assert_consistent() == "3.0.0"


def _no_rollback(doc: dict[str, object]) -> None:
    doc["rollback_to"] = []


@pytest.mark.parametrize("opts", LAYOUTS[:2])
def test_plan_naming_a_kept_old_release_without_authorisation_is_refused(
    make_sandbox: MakeSandbox, opts: dict[str, str]
) -> None:
    """A plan (as a hostile server sends it) naming an old release kept in backup/releases,
    which the installed release does not authorise, is refused and nothing moves."""
    sb = make_sandbox(**opts)
    sb.publish("3.0.0")
    sb.publish("3.0.1", mutate=_no_rollback)
    _installed(sb, "3.0.0")
    sb.write_plan("3.0.1", "3.0.0")
    assert sb.converge().returncode == 0
    pid = sb.agent_pid()
    before = sb.snapshot()
    sb.write_plan("3.0.0", "3.0.1")
    run = sb.converge()
    assert run.returncode != 0, run.stdout + run.stderr
    assert "refused to restore 3.0.0" in run.stdout
    assert "below the highest serial seen" in run.stdout
    assert sb.state_json()["last_result"] == "refused"
    assert sb.assert_consistent() == "3.0.1"
    assert sb.snapshot() == before
    assert sb.agent_pid() == pid


@pytest.mark.parametrize("opts", LAYOUTS[:2])
def test_authorised_plan_rollback_restores_from_the_local_copy(
    make_sandbox: MakeSandbox, opts: dict[str, str]
) -> None:
    """A plan back to a release the installed one authorises (rollback_to) restores it locally."""
    sb = make_sandbox(**opts)
    for v in ("3.0.0", "3.0.1"):
        sb.publish(v)
    _installed(sb, "3.0.0")
    sb.write_plan("3.0.1", "3.0.0")
    assert sb.converge().returncode == 0
    sb.write_plan("3.0.0", "3.0.1")
    shutil.rmtree(sb.repo / "artifacts")  # proves the restore is local
    run = sb.converge()
    assert run.returncode == 0, run.stdout + run.stderr
    assert "restoring 3.0.0 from the local copy" in run.stdout
    assert sb.assert_consistent() == "3.0.0"


def test_operator_rollback_restores_even_without_authorisation(make_sandbox: MakeSandbox) -> None:
    """`agent-runtime rollback` (the operator, locally) restores known-good unconditionally."""
    sb = make_sandbox(layout="in_place")
    sb.publish("3.0.0")
    sb.publish("3.0.1", mutate=_no_rollback)
    _installed(sb, "3.0.0")
    sb.write_plan("3.0.1", "3.0.0")
    assert sb.converge().returncode == 0
    run = sb.cli("rollback")
    assert run.returncode == 0, run.stdout + run.stderr
    assert sb.assert_consistent() == "3.0.0"
