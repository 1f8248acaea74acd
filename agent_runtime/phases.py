"""The on-device transaction as a pure state machine: phases, events and one transition table.

The executor (``agent_runtime.transaction``) saves the journal *before*
entering each phase, performs that phase's effect, and feeds the outcome
event to :func:`next_phase`. Nothing here does IO.
"""

from __future__ import annotations

from enum import StrEnum

from states.plan import StepName

__all__ = [
    "FORWARD_PHASES",
    "RECOVERY_START",
    "ROLLBACK_PHASES",
    "STEP_OF_PHASE",
    "TERMINAL_PHASES",
    "TRANSITIONS",
    "Event",
    "Phase",
    "next_phase",
]


class Phase(StrEnum):
    """Where a transaction is; the journal records the phase about to run."""

    IDLE = "IDLE"
    DOWNLOAD = "DOWNLOAD"
    VERIFY = "VERIFY"
    BACKUP = "BACKUP"
    SWAP = "SWAP"
    RESTART = "RESTART"
    CONFIRM = "CONFIRM"
    COMMIT = "COMMIT"
    CLEANUP = "CLEANUP"  # failed before the swap: drop staging, running agent untouched
    ROLLBACK_SWAP = "ROLLBACK_SWAP"
    ROLLBACK_RESTART = "ROLLBACK_RESTART"
    ROLLBACK_CONFIRM = "ROLLBACK_CONFIRM"
    DONE = "DONE"  # committed: the target is the new known-good
    ROLLED_BACK = "ROLLED_BACK"  # the previous known-good runs again
    FAILED = "FAILED"  # nothing changed on the device (or recovery gave up)


class Event(StrEnum):
    """The outcome of a phase's effect."""

    START = "start"
    OK = "ok"
    FAIL = "fail"
    CRASHED = "crashed"  # found open in the journal on start: the process died in this phase


TRANSITIONS: dict[tuple[Phase, Event], Phase] = {
    (Phase.IDLE, Event.START): Phase.DOWNLOAD,
    (Phase.DOWNLOAD, Event.OK): Phase.VERIFY,
    (Phase.DOWNLOAD, Event.FAIL): Phase.CLEANUP,
    (Phase.DOWNLOAD, Event.CRASHED): Phase.DOWNLOAD,  # resumable: partial files kept
    (Phase.VERIFY, Event.OK): Phase.BACKUP,
    (Phase.VERIFY, Event.FAIL): Phase.CLEANUP,
    (Phase.VERIFY, Event.CRASHED): Phase.VERIFY,
    (Phase.BACKUP, Event.OK): Phase.SWAP,
    (Phase.BACKUP, Event.FAIL): Phase.CLEANUP,
    (Phase.BACKUP, Event.CRASHED): Phase.BACKUP,  # backup is rewritten from scratch
    (Phase.SWAP, Event.OK): Phase.RESTART,
    (Phase.SWAP, Event.FAIL): Phase.ROLLBACK_SWAP,
    (Phase.SWAP, Event.CRASHED): Phase.ROLLBACK_SWAP,  # a half swap is completed backwards
    (Phase.RESTART, Event.OK): Phase.CONFIRM,
    (Phase.RESTART, Event.FAIL): Phase.ROLLBACK_SWAP,
    (Phase.RESTART, Event.CRASHED): Phase.ROLLBACK_SWAP,
    (Phase.CONFIRM, Event.OK): Phase.COMMIT,
    (Phase.CONFIRM, Event.FAIL): Phase.ROLLBACK_SWAP,
    (Phase.CONFIRM, Event.CRASHED): Phase.ROLLBACK_SWAP,  # unconfirmed: never trust it
    (Phase.COMMIT, Event.OK): Phase.DONE,
    (Phase.COMMIT, Event.FAIL): Phase.COMMIT,  # confirmed healthy: retry recording it
    (Phase.COMMIT, Event.CRASHED): Phase.COMMIT,
    (Phase.CLEANUP, Event.OK): Phase.FAILED,
    (Phase.CLEANUP, Event.FAIL): Phase.FAILED,  # leftovers are removed by the next start
    (Phase.CLEANUP, Event.CRASHED): Phase.CLEANUP,
    (Phase.ROLLBACK_SWAP, Event.OK): Phase.ROLLBACK_RESTART,
    (Phase.ROLLBACK_SWAP, Event.FAIL): Phase.ROLLBACK_SWAP,  # retried, then left open
    (Phase.ROLLBACK_SWAP, Event.CRASHED): Phase.ROLLBACK_SWAP,
    (Phase.ROLLBACK_RESTART, Event.OK): Phase.ROLLBACK_CONFIRM,
    (Phase.ROLLBACK_RESTART, Event.FAIL): Phase.ROLLBACK_RESTART,
    (Phase.ROLLBACK_RESTART, Event.CRASHED): Phase.ROLLBACK_SWAP,  # files may be unknown
    (Phase.ROLLBACK_CONFIRM, Event.OK): Phase.ROLLED_BACK,
    (Phase.ROLLBACK_CONFIRM, Event.FAIL): Phase.ROLLBACK_RESTART,
    (Phase.ROLLBACK_CONFIRM, Event.CRASHED): Phase.ROLLBACK_SWAP,
}

#: Phases that end a transaction; the journal is closed in them.
TERMINAL_PHASES = frozenset({Phase.DONE, Phase.ROLLED_BACK, Phase.FAILED})
#: The forward path, in order.
FORWARD_PHASES = (
    Phase.DOWNLOAD,
    Phase.VERIFY,
    Phase.BACKUP,
    Phase.SWAP,
    Phase.RESTART,
    Phase.CONFIRM,
    Phase.COMMIT,
)
#: The plan step (``states.plan.StepName``, what plans and step events name) each
#: forward phase carries out: the n-th forward phase is the n-th step, so the
#: two cannot drift apart (zip(strict=True) fails at import when their counts differ).
STEP_OF_PHASE: dict[Phase, StepName] = dict(zip(FORWARD_PHASES, StepName, strict=True))
ROLLBACK_PHASES = (Phase.ROLLBACK_SWAP, Phase.ROLLBACK_RESTART, Phase.ROLLBACK_CONFIRM)
#: Where recovery resumes a journal left open in each phase.
RECOVERY_START: dict[Phase, Phase] = {
    p: TRANSITIONS[(p, Event.CRASHED)] for p in Phase if (p, Event.CRASHED) in TRANSITIONS
}


def next_phase(phase: Phase, event: Event) -> Phase:
    """The phase that follows ``phase`` on ``event``.

    Raises RuntimeError for a pair missing from the table (a programming mistake).
    """
    try:
        return TRANSITIONS[(phase, event)]
    except KeyError:
        raise RuntimeError(f"no transition from {phase} on {event}") from None
