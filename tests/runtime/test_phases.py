"""The transition table: complete, and the state chains it produces."""

from __future__ import annotations

import pytest

from agent_runtime.phases import (
    FORWARD_PHASES,
    RECOVERY_START,
    STEP_OF_PHASE,
    TERMINAL_PHASES,
    TRANSITIONS,
    Event,
    Phase,
    next_phase,
)
from states.plan import StepName


def _chain(start: Phase, events: list[Event]) -> list[Phase]:
    phases = [start]
    for e in events:
        phases.append(next_phase(phases[-1], e))
    return phases


def test_every_working_phase_has_ok_fail_and_crash() -> None:
    """Each non-terminal phase after IDLE says where OK, FAIL and a crash lead."""
    for phase in Phase:
        if phase in TERMINAL_PHASES or phase is Phase.IDLE:
            continue
        for event in (Event.OK, Event.FAIL, Event.CRASHED):
            assert (phase, event) in TRANSITIONS, (phase, event)


def test_terminal_phases_have_no_way_out() -> None:
    """DONE, ROLLED_BACK and FAILED end a transaction."""
    assert not [k for k in TRANSITIONS if k[0] in TERMINAL_PHASES]


OK, FAIL = Event.OK, Event.FAIL

CHAINS = [
    ("happy path", [OK] * 7, Phase.DONE),
    ("download fails", [FAIL, OK], Phase.FAILED),
    ("verify fails", [OK, FAIL, OK], Phase.FAILED),
    ("backup fails", [OK, OK, FAIL, OK], Phase.FAILED),
    ("swap fails", [OK, OK, OK, FAIL, OK, OK, OK], Phase.ROLLED_BACK),
    ("restart fails", [OK] * 4 + [FAIL, OK, OK, OK], Phase.ROLLED_BACK),
    ("confirm fails", [OK] * 5 + [FAIL, OK, OK, OK], Phase.ROLLED_BACK),
    ("old agent slow to confirm", [OK] * 5 + [FAIL, OK, OK, FAIL, OK, OK], Phase.ROLLED_BACK),
]


@pytest.mark.parametrize(("name", "events", "end"), CHAINS, ids=[c[0] for c in CHAINS])
def test_state_chains(name: str, events: list[Event], end: Phase) -> None:
    """Each table-driven chain of events from DOWNLOAD ends in the phase its case names."""
    assert _chain(Phase.DOWNLOAD, events)[-1] is end


@pytest.mark.parametrize(
    ("crashed_in", "resume_at"),
    [
        (Phase.DOWNLOAD, Phase.DOWNLOAD),
        (Phase.VERIFY, Phase.VERIFY),
        (Phase.BACKUP, Phase.BACKUP),
        (Phase.SWAP, Phase.ROLLBACK_SWAP),
        (Phase.RESTART, Phase.ROLLBACK_SWAP),
        (Phase.CONFIRM, Phase.ROLLBACK_SWAP),
        (Phase.COMMIT, Phase.COMMIT),
        (Phase.CLEANUP, Phase.CLEANUP),
        (Phase.ROLLBACK_SWAP, Phase.ROLLBACK_SWAP),
        (Phase.ROLLBACK_RESTART, Phase.ROLLBACK_SWAP),
        (Phase.ROLLBACK_CONFIRM, Phase.ROLLBACK_SWAP),
    ],
)
def test_recovery_resumes_at(crashed_in: Phase, resume_at: Phase) -> None:
    """A journal open after a crash in a phase resumes where the recovery rules say."""
    assert RECOVERY_START[crashed_in] is resume_at


def test_unknown_transition_is_a_programming_error() -> None:
    """Asking for a pair missing from the table raises RuntimeError."""
    with pytest.raises(RuntimeError, match="no transition"):
        next_phase(Phase.DONE, Event.OK)


def test_each_forward_phase_is_the_plan_step_of_the_same_name() -> None:
    """The forward phases map one to one, in order, onto the plan's StepName steps."""
    assert list(STEP_OF_PHASE) == list(FORWARD_PHASES)
    assert list(STEP_OF_PHASE.values()) == list(StepName)
    for phase, step in STEP_OF_PHASE.items():
        assert step.name.startswith(phase.name), (phase, step)
