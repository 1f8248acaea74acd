"""Step events: a transaction's phases as the server records them (``StepEvent``).

Pull mode queues them for ``POST /v1/devices/{id}/events``; ``converge --once
--json`` prints them in its result, from which `engine apply --transport ssh`
posts them for agentless devices. One conversion for both, so forensics reads
the same steps whichever way a device is driven.
"""

from __future__ import annotations

from datetime import datetime

from agent_runtime.journal import JournalRecord
from agent_runtime.phases import STEP_OF_PHASE, Phase
from states.protocol import StepEvent

__all__ = ["step_event"]

#: Phases that are states of the journal, not steps anyone waits on.
_SILENT = frozenset({Phase.IDLE, Phase.DONE, Phase.ROLLED_BACK, Phase.FAILED})


def step_event(
    record: JournalRecord, phase: Phase, status: str, detail: str, at: datetime
) -> StepEvent | None:
    """The event for ``phase`` of ``record``'s transaction reaching ``status``
    (started | ok | failed), or None for a phase that is not a step."""
    if phase in _SILENT:
        return None
    known = STEP_OF_PHASE.get(phase)
    step = known.value if known is not None else phase.value.lower()
    return StepEvent(target=record.target, step=step, status=status,
                     detail=detail[:2000] or None, at=at)  # fmt: skip
