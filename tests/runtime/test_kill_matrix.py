"""Kill matrix: the runtime killed or failing at every phase boundary ends on one release.

Every case runs ``agent-runtime converge --once`` as a real subprocess with a
fault point (``AGENT_RUNTIME_FAULT``), then starts it again without one. After
the restart the agent root holds exactly one release's files and nothing else
(no temporary file of a killed run), that release runs and heartbeats, and the
journal is closed. Rollbacks are killed too, on the first run and a second
time while a restart recovers a half-done swap.
"""

from __future__ import annotations

import random
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from agent_runtime.phases import FORWARD_PHASES, ROLLBACK_PHASES
from tests.harness.sandbox import Sandbox

LAYOUTS = ["in_place", "versioned"]


def _cases(layout: str) -> list[tuple[str, str]]:
    """(fault spec, mode) for every phase boundary, rollback phase and mid-swap point."""
    cases: list[tuple[str, str]] = []
    swap_steps = (1, 2, 3) if layout == "in_place" else (1, 2)
    for phase in FORWARD_PHASES:
        cases += [(f"before:{phase}=kill", "kill"), (f"after:{phase}=kill", "kill")]
        cases.append((f"before:{phase}=fail", "fail"))
    for phase in ROLLBACK_PHASES:
        for mode in ("kill", "fail"):
            cases.append((f"before:CONFIRM=fail,before:{phase}={mode}", mode))
    if layout == "in_place":  # killed with a half-written copy beside a restored file
        for n in (1, 2):
            cases.append((f"before:CONFIRM=fail,rollback.file:{n}=kill", "kill"))
    for mode in ("kill", "fail"):
        cases.append((f"before:VERIFY=fail,before:CLEANUP={mode}", mode))
        for n in swap_steps:
            cases.append((f"swap.file:{n}={mode}", mode))
    cases.append(("download.chunk:1=kill", "kill"))
    return cases


MATRIX = [(layout, *case) for layout in LAYOUTS for case in _cases(layout)]


@pytest.fixture(scope="module")
def devices(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Sandbox]]:
    """One device per layout shared by the matrix: 3.0.0 installed, 3.0.1 published."""
    made: dict[str, Sandbox] = {}
    yield made
    for sb in made.values():
        sb.stop_agent()


def _device(devices: dict[str, Sandbox], layout: str, base: Path) -> Sandbox:
    if layout not in devices:
        sb = Sandbox(base=base, layout=layout)
        sb.publish("3.0.0", extra_files={"core/legacy.py": b"LEGACY = True\n"})
        sb.publish("3.0.1")
        sb.write_plan("3.0.0")
        run = sb.converge()
        assert run.returncode == 0, run.stdout + run.stderr
        devices[layout] = sb
    return devices[layout]


def _flip_target(sb: Sandbox) -> str:
    current = sb.state_json()["installed"]
    target = "3.0.1" if current == "3.0.0" else "3.0.0"
    sb.write_plan(target, current)
    return target


@pytest.mark.parametrize(
    ("layout", "fault", "mode"), MATRIX, ids=[f"{c[0]}-{c[1]}" for c in MATRIX]
)
@pytest.mark.slow
def test_fault_then_restart_ends_on_one_release(
    devices: dict[str, Sandbox],
    tmp_path_factory: pytest.TempPathFactory,
    layout: str,
    fault: str,
    mode: str,
) -> None:
    """Killed or failing at this point, then restarted: one release, running, journal closed."""
    device = _device(devices, layout, tmp_path_factory.mktemp(f"kill-{layout}"))
    target = _flip_target(device)
    faulted = device.converge(fault=fault)
    out = faulted.stdout + faulted.stderr
    if mode == "kill":
        assert faulted.returncode == -signal.SIGKILL, out
    else:
        assert faulted.returncode in (0, 1), out
        journal = device.journal_json()
        if journal is not None and journal["phase"] in ("DONE", "ROLLED_BACK", "FAILED"):
            device.assert_consistent()  # a failing step alone never leaves a mix
    restarted = device.converge()
    assert restarted.returncode == 0, f"{fault}\n{out}\n--- restart ---\n{restarted.stdout}"
    assert device.assert_consistent() == target
    assert device.staging_entries() == []
    assert device.stray_files() == []


def _second_kills(layout: str) -> list[str]:
    """Faults for the run that recovers a swap killed half-way: a kill before and after
    each rollback phase, and (in place) half-way through restoring each file."""
    kills = [f"{when}:{phase}=kill" for phase in ROLLBACK_PHASES for when in ("before", "after")]
    if layout == "in_place":
        kills += [f"rollback.file:{n}=kill" for n in (1, 2)]
    return kills


SECOND = [(layout, kill) for layout in LAYOUTS for kill in _second_kills(layout)]


@pytest.mark.parametrize(("layout", "second"), SECOND, ids=[f"{c[0]}-{c[1]}" for c in SECOND])
@pytest.mark.slow
def test_kill_while_recovering_ends_on_one_release_without_leftovers(
    devices: dict[str, Sandbox],
    tmp_path_factory: pytest.TempPathFactory,
    layout: str,
    second: str,
) -> None:
    """Killed half-way through the swap, then killed again while the restart rolls it back:
    the third start ends on the target, no temporary file left, journal closed."""
    device = _device(devices, layout, tmp_path_factory.mktemp(f"kill2-{layout}"))
    target = _flip_target(device)
    first = device.converge(fault="swap.file:2=kill")
    assert first.returncode == -signal.SIGKILL, first.stdout + first.stderr
    assert device.journal_json()["phase"] == "SWAP"  # type: ignore[index]
    recovering = device.converge(fault=second)
    out = recovering.stdout + recovering.stderr
    assert recovering.returncode == -signal.SIGKILL, out
    assert "recovering transaction" in out
    journal = device.journal_json()
    assert journal is not None and journal["phase"] in {str(p) for p in ROLLBACK_PHASES}
    third = device.converge()
    assert third.returncode == 0, f"{second}\n{out}\n--- third ---\n{third.stdout}"
    assert device.assert_consistent() == target
    assert device.journal_json()["phase"] == "DONE"  # type: ignore[index]
    assert device.stray_files() == []
    assert device.staging_entries() == []
    assert sorted(p.name for p in device.state.iterdir() if ".tmp-" in p.name) == []


def _random_kills(base: Path, layout: str, wanted: int) -> str | None:
    """Kill ``wanted`` converges at random instants; None if every restart was consistent."""
    rng = random.Random(f"kills-{layout}")
    sb = Sandbox(base=base, layout=layout)
    try:
        sb.publish("3.0.0")
        sb.publish("3.0.1")
        sb.write_plan("3.0.0")
        assert sb.converge().returncode == 0
        # kill instants scale with how long an update takes on this machine (not asserted)
        _flip_target(sb)
        started = time.monotonic()
        assert sb.converge().returncode == 0
        span = time.monotonic() - started
        kills = trials = 0
        while kills < wanted and trials < 4 * wanted:
            trials += 1
            _flip_target(sb)
            proc = subprocess.Popen(
                sb.cli_argv("converge", "--once", "--plan", str(sb.plan_path)),
                env=sb.cli_env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(rng.uniform(0.3, 0.95) * span)
            if proc.poll() is None:
                proc.kill()
                kills += 1
            else:  # the update finished first: this machine is faster now, aim earlier
                span *= 0.7
            proc.wait(30)
            again = sb.converge()
            if again.returncode != 0:
                return f"{layout} trial {trials}: {again.stdout}{again.stderr}"
            sb.assert_consistent()
            assert sb.stray_files() == [], f"trial {trials}"
        if kills < wanted:
            return f"{layout}: only {kills} kills landed in {trials} trials"
        return None
    except AssertionError as e:
        return f"{layout}: {e}"
    finally:
        sb.stop_agent()


@pytest.mark.slow
@pytest.mark.timeout(900)  # 100 runtime processes: 3 min alone, over 5 on a loaded machine
def test_random_kills(tmp_path: Path) -> None:
    """50 SIGKILLs at random instants (25 per layout, run side by side): 0 inconsistent restarts."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(_random_kills, tmp_path / layout, layout, 25) for layout in LAYOUTS]
        failures = [f.result() for f in futures]
    assert failures == [None, None]


def _agent_processes(sb: Sandbox) -> list[int]:
    """Pids of live agent processes running anywhere in the sandbox."""
    import psutil

    base = str(sb.base.resolve())
    found = []
    for proc in psutil.process_iter(["cwd", "cmdline", "status"]):
        info = proc.info
        cwd = info.get("cwd") or ""
        if (
            info.get("status") != psutil.STATUS_ZOMBIE
            and cwd.startswith(base)
            and ("nats_agent.py" in " ".join(info.get("cmdline") or []))
        ):
            found.append(proc.pid)
    return found


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.slow
def test_kill_between_agent_spawn_and_pid_file_leaves_one_tracked_agent(
    tmp_path: Path, layout: str
) -> None:
    """Runtime SIGKILLed after spawning the new agent but before writing its pid file, then
    restarted: exactly one agent runs afterwards, the one the pid file names."""
    sb = Sandbox(base=tmp_path / layout, layout=layout)
    try:
        sb.publish("3.0.0")
        sb.publish("3.0.1")
        sb.write_plan("3.0.0")
        assert sb.converge().returncode == 0
        sb.write_plan("3.0.1", "3.0.0")
        faulted = sb.converge(fault="process.spawned=kill")
        assert faulted.returncode == -signal.SIGKILL, faulted.stdout + faulted.stderr
        assert not (sb.state / "agent.pid").exists() and (sb.state / "agent.launch").exists()
        assert len(_agent_processes(sb)) == 1  # the new agent, tracked by nobody
        restarted = sb.converge()
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
        assert sb.assert_consistent() == "3.0.1"
        assert _agent_processes(sb) == [sb.agent_pid()]
        assert not (sb.state / "agent.launch").exists()
    finally:
        sb.stop_agent()
