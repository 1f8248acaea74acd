"""State chains of the transaction on in-memory effects: phases entered and journal writes.

Each case runs `converge` to 3.0.1 on a device that runs 3.0.0 (``World``:
fakes of the fetcher, layout, service manager, health probe and clock, the
real journal and state files), with faults injected into the fakes, and
asserts the exact chain of phases (``|`` where the runtime died, then the
next run's recovery), every journal write, each run's result and the
restarts. The cases together take every transition of ``phases.TRANSITIONS``
(checked below). Real processes killed at each point: test_kill_matrix.py.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent_runtime.phases import TRANSITIONS, Event, Phase
from tests.harness.world import World

FWD = "DOWNLOAD VERIFY BACKUP SWAP RESTART CONFIRM"
FWD_W = "DOWNLOAD VERIFY BACKUP SWAP SWAP+agent.py SWAP+data.bin RESTART CONFIRM"
BACK = "ROLLBACK_SWAP ROLLBACK_RESTART ROLLBACK_CONFIRM ROLLED_BACK"
DONE = "COMMIT DONE"


@dataclass(frozen=True)
class Case:
    """One row: faults, runs of `converge` to 3.0.1, and what they must produce."""

    name: str
    faults: dict[str, tuple[str, ...]]
    chain: str
    writes: str
    results: str  # each run's result; "-" for a run that died
    restarts: str  # versions (re)started, in order
    installed: str = "3.0.1"
    env: str | None = None  # AGENT_RUNTIME_FAULT, for a phase no fake takes part in
    setup: tuple[str, ...] = ("3.0.0",)

    @property
    def run_count(self) -> int:
        """Runs: one per result."""
        return len(self.results.split())


def _crash_forward(phase: str, before: str, after: str) -> Case:
    """Killed on entering a forward phase that recovery resumes: the next run finishes."""
    return Case(
        f"killed entering {phase}, resumed",
        {f"before:{phase}": ("crash",)},
        f"{before} {phase} | {phase} {after}".strip(),
        f"{_writes(before)} {phase} {_writes(phase + ' ' + after)}".strip(),
        "- noop",
        "3.0.1",
    )


def _writes(chain: str) -> str:
    return chain.replace("SWAP ", "SWAP SWAP+agent.py SWAP+data.bin ").replace(" |", "").strip()


CASES = [
    Case("happy path", {}, f"{FWD} {DONE}", f"{FWD_W} {DONE}", "committed", "3.0.1"),
    Case("download fails", {"fetch": ("fail",)}, "DOWNLOAD CLEANUP FAILED",
         "DOWNLOAD CLEANUP FAILED", "failed", "", "3.0.0"),
    Case("verify fails (corrupt download)", {"fetch": ("corrupt",)},
         "DOWNLOAD VERIFY CLEANUP FAILED", "DOWNLOAD VERIFY CLEANUP FAILED", "failed", "", "3.0.0"),
    Case("backup fails", {"backup": ("fail",)}, "DOWNLOAD VERIFY BACKUP CLEANUP FAILED",
         "DOWNLOAD VERIFY BACKUP CLEANUP FAILED", "failed", "", "3.0.0"),
    Case("cleanup fails", {"fetch": ("fail",)}, "DOWNLOAD CLEANUP FAILED",
         "DOWNLOAD CLEANUP FAILED", "failed", "", "3.0.0", env="before:CLEANUP=fail"),
    Case("swap fails half-way", {"swap": ("fail",)},
         f"DOWNLOAD VERIFY BACKUP SWAP {BACK}",
         f"DOWNLOAD VERIFY BACKUP SWAP SWAP+agent.py {BACK}", "rolled_back", "3.0.0", "3.0.0"),
    Case("restart fails", {"restart 3.0.1": ("fail",)},
         f"{FWD[: -len(' CONFIRM')]} {BACK}", f"{FWD_W[: -len(' CONFIRM')]} {BACK}",
         "rolled_back", "3.0.0", "3.0.0"),
    Case("confirm fails", {"probe 3.0.1": ("fail",)}, f"{FWD} {BACK}", f"{FWD_W} {BACK}",
         "rolled_back", "3.0.1 3.0.0", "3.0.0"),
    Case("commit fails once, retried", {"finish": ("fail",)}, f"{FWD} COMMIT COMMIT DONE",
         f"{FWD_W} COMMIT COMMIT DONE", "committed", "3.0.1"),
    Case("commit keeps failing: open, finished by the next run", {"finish": ("fail",) * 3},
         f"{FWD} COMMIT COMMIT COMMIT open COMMIT DONE",
         f"{FWD_W} COMMIT COMMIT COMMIT COMMIT DONE", "failed noop", "3.0.1"),
    Case("rollback swap fails once", {"probe 3.0.1": ("fail",), "rollback": ("fail",)},
         f"{FWD} ROLLBACK_SWAP {BACK}", f"{FWD_W} ROLLBACK_SWAP {BACK}", "rolled_back",
         "3.0.1 3.0.0", "3.0.0"),
    Case("rollback restart fails once", {"probe 3.0.1": ("fail",), "restart 3.0.0": ("fail",)},
         f"{FWD} ROLLBACK_SWAP ROLLBACK_RESTART ROLLBACK_RESTART ROLLBACK_CONFIRM ROLLED_BACK",
         f"{FWD_W} ROLLBACK_SWAP ROLLBACK_RESTART ROLLBACK_RESTART ROLLBACK_CONFIRM ROLLED_BACK",
         "rolled_back", "3.0.1 3.0.0", "3.0.0"),
    Case("old release slow to confirm", {"probe 3.0.1": ("fail",), "probe 3.0.0": ("fail",)},
         f"{FWD} ROLLBACK_SWAP ROLLBACK_RESTART ROLLBACK_CONFIRM {BACK[len('ROLLBACK_SWAP ') :]}",
         f"{FWD_W} ROLLBACK_SWAP ROLLBACK_RESTART ROLLBACK_CONFIRM "
         f"{BACK[len('ROLLBACK_SWAP ') :]}",
         "rolled_back", "3.0.1 3.0.0 3.0.0", "3.0.0"),
    Case("rollback keeps failing: open, finished by the next run, which retries 3.0.1",
         {"probe 3.0.1": ("fail",), "rollback": ("fail",) * 3},
         f"{FWD} ROLLBACK_SWAP ROLLBACK_SWAP ROLLBACK_SWAP open {BACK} {FWD} {DONE}",
         f"{FWD_W} ROLLBACK_SWAP ROLLBACK_SWAP ROLLBACK_SWAP {BACK} {FWD_W} {DONE}",
         "failed committed", "3.0.1 3.0.0 3.0.1"),
    Case("attempts capped: the third run refuses without a journal write",
         {"probe 3.0.1": ("fail", "fail")}, f"{FWD} {BACK} {FWD} {BACK}",
         f"{FWD_W} {BACK} {FWD_W} {BACK}", "rolled_back rolled_back failed",
         "3.0.1 3.0.0 3.0.1 3.0.0", "3.0.0"),
    Case("converged: a re-run is a no-op with no journal write and no restart", {}, "", "",
         "noop", "", setup=("3.0.0", "3.0.1")),
    # killed (the runtime process dies) on entering each phase; the next run recovers
    _crash_forward("DOWNLOAD", "", f"VERIFY BACKUP SWAP RESTART CONFIRM {DONE}"),
    _crash_forward("VERIFY", "DOWNLOAD", f"BACKUP SWAP RESTART CONFIRM {DONE}"),
    _crash_forward("BACKUP", "DOWNLOAD VERIFY", f"SWAP RESTART CONFIRM {DONE}"),
    Case("killed entering SWAP: rolled back, then retried", {"before:SWAP": ("crash",)},
         f"DOWNLOAD VERIFY BACKUP SWAP | {BACK} {FWD} {DONE}",
         f"DOWNLOAD VERIFY BACKUP SWAP {BACK} {FWD_W} {DONE}", "- committed", "3.0.0 3.0.1"),
    Case("killed half-way through the swap: rolled back, then retried", {"swap": ("crash",)},
         f"DOWNLOAD VERIFY BACKUP SWAP | {BACK} {FWD} {DONE}",
         f"DOWNLOAD VERIFY BACKUP SWAP SWAP+agent.py {BACK} {FWD_W} {DONE}", "- committed",
         "3.0.0 3.0.1"),
    Case("killed entering RESTART: rolled back, then retried", {"before:RESTART": ("crash",)},
         f"DOWNLOAD VERIFY BACKUP SWAP RESTART | {BACK} {FWD} {DONE}",
         f"DOWNLOAD VERIFY BACKUP SWAP SWAP+agent.py SWAP+data.bin RESTART {BACK} {FWD_W} {DONE}",
         "- committed", "3.0.0 3.0.1"),
    Case("killed entering CONFIRM: never trusted, rolled back, retried",
         {"before:CONFIRM": ("crash",)}, f"{FWD} | {BACK} {FWD} {DONE}",
         f"{FWD_W} {BACK} {FWD_W} {DONE}", "- committed", "3.0.1 3.0.0 3.0.1"),
    Case("killed entering COMMIT: committed by the next run", {"before:COMMIT": ("crash",)},
         f"{FWD} COMMIT | {DONE}", f"{FWD_W} COMMIT {DONE}", "- noop", "3.0.1"),
    Case("killed entering CLEANUP: cleaned up, then retried",
         {"fetch": ("fail",), "before:CLEANUP": ("crash",)},
         f"DOWNLOAD CLEANUP | CLEANUP FAILED {FWD} {DONE}",
         f"DOWNLOAD CLEANUP CLEANUP FAILED {FWD_W} {DONE}", "- committed", "3.0.1"),
    Case("killed entering ROLLBACK_SWAP: rolled back by the next run, retried",
         {"probe 3.0.1": ("fail",), "before:ROLLBACK_SWAP": ("crash",)},
         f"{FWD} ROLLBACK_SWAP | {BACK} {FWD} {DONE}",
         f"{FWD_W} ROLLBACK_SWAP {BACK} {FWD_W} {DONE}", "- committed", "3.0.1 3.0.0 3.0.1"),
    Case("killed entering ROLLBACK_RESTART: swapped back again, retried",
         {"probe 3.0.1": ("fail",), "before:ROLLBACK_RESTART": ("crash",)},
         f"{FWD} ROLLBACK_SWAP ROLLBACK_RESTART | {BACK} {FWD} {DONE}",
         f"{FWD_W} ROLLBACK_SWAP ROLLBACK_RESTART {BACK} {FWD_W} {DONE}", "- committed",
         "3.0.1 3.0.0 3.0.1"),
    Case("killed entering ROLLBACK_CONFIRM: swapped back again, retried",
         {"probe 3.0.1": ("fail",), "before:ROLLBACK_CONFIRM": ("crash",)},
         f"{FWD} ROLLBACK_SWAP ROLLBACK_RESTART ROLLBACK_CONFIRM | {BACK} {FWD} {DONE}",
         f"{FWD_W} ROLLBACK_SWAP ROLLBACK_RESTART ROLLBACK_CONFIRM {BACK} {FWD_W} {DONE}",
         "- committed", "3.0.1 3.0.0 3.0.0 3.0.1"),
    Case("killed at every recovery: gives up after five, 3.0.1 not retried",
         {"before:SWAP": ("crash",), "before:ROLLBACK_SWAP": ("crash",) * 5},
         "DOWNLOAD VERIFY BACKUP SWAP |" + " ROLLBACK_SWAP |" * 5 + " FAILED",
         "DOWNLOAD VERIFY BACKUP SWAP" + " ROLLBACK_SWAP" * 5 + " FAILED",
         "- - - - - - failed", "", "3.0.0"),
]  # fmt: skip


@pytest.fixture(autouse=True)
def _no_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    """Durability is the kill matrix's business; here fsync only costs time."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)


def _run(base: Path, case: Case, monkeypatch: pytest.MonkeyPatch) -> tuple[World, list[str]]:
    world = World(base)
    for version in case.setup:
        res = world.converge(version)
        assert res is not None and res.result.value == "committed", res
    world.forget()
    for point, actions in case.faults.items():
        world.faults.add(point, *actions)
    if case.env:
        monkeypatch.setenv("AGENT_RUNTIME_FAULT", case.env)
    results = []
    for _ in range(case.run_count):
        res = world.converge("3.0.1")
        results.append("-" if res is None else res.result.value)
    monkeypatch.delenv("AGENT_RUNTIME_FAULT", raising=False)
    return world, results


#: transitions each case took, kept by test_state_chain for the coverage test
_TAKEN: dict[str, set[tuple[Phase, Event]]] = {}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_state_chain(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The case goes through exactly its chain of phases and journal writes, and ends with
    its results, restarts and installed release (files and state agree)."""
    world, results = _run(tmp_path, case, monkeypatch)
    _TAKEN[case.name] = _taken(world)
    assert world.chain() == case.chain
    assert " ".join(world.writes) == case.writes
    assert " ".join(results) == case.results
    assert " ".join(world.service.restarts) == case.restarts
    assert not any(world.faults.queued.values()), f"faults never hit: {world.faults.queued}"
    state = world.runtime().states.load()
    assert str(state.installed) == case.installed
    assert world.layout.files() == world.release_files(case.installed)
    assert str(world.service.running) == case.installed
    record = world.journal()
    assert record is not None and not record.is_open


def _taken(world: World) -> set[tuple[Phase, Event]]:
    """The (phase, event) pairs of TRANSITIONS that a world's runs went through."""
    taken: set[tuple[Phase, Event]] = set()
    phases = world.phases
    for i, (name, kind) in enumerate(phases):
        if kind == "started":
            nxt = phases[i + 1][1] if i + 1 < len(phases) else "crash"
            event = {"ok": Event.OK, "failed": Event.FAIL, "crash": Event.CRASHED}[nxt]
            taken.add((Phase(name), event))
            if name == "DOWNLOAD" and (i == 0 or phases[i - 1][1] in ("end", "crash")):
                taken.add((Phase.IDLE, Event.START))
    return taken


def test_cases_take_every_transition(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Together the cases go through every (phase, event) row of the transition table."""
    taken: set[tuple[Phase, Event]] = set()
    for i, case in enumerate(CASES):
        if case.name not in _TAKEN:  # run alone: run the case here
            _TAKEN[case.name] = _taken(_run(tmp_path / str(i), case, monkeypatch)[0])
        taken |= _TAKEN[case.name]
    assert set(TRANSITIONS) - taken == set()
    assert taken - set(TRANSITIONS) == set()


def test_a_changed_fake_shows_in_the_chain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The chain is observed, not assumed: an unexpected failure changes it."""
    case = CASES[0]
    world = World(tmp_path)
    assert world.converge("3.0.0") is not None
    world.forget()
    world.faults.add("probe 3.0.1", "fail")
    world.converge("3.0.1")
    assert world.chain() != case.chain
    assert world.chain() == f"{FWD} {BACK}"
