"""Named fault points for crash and failure testing; inert unless AGENT_RUNTIME_FAULT is set.

``AGENT_RUNTIME_FAULT`` holds comma-separated ``POINT=ACTION`` items, e.g.::

    AGENT_RUNTIME_FAULT="before:RESTART=kill"
    AGENT_RUNTIME_FAULT="swap.file:2=kill"
    AGENT_RUNTIME_FAULT="before:CONFIRM=fail,before:ROLLBACK_SWAP=kill"

Points: ``before:<PHASE>`` (journal saved, effect not started), ``after:<PHASE>``
(effect done, next journal not yet saved), ``swap.file:<n>`` (in-place swap:
the n-th file, counted from 1, has just been renamed in; versioned: n=1 after
the release directory is in place, before the pointer flips),
``rollback.file:<n>`` (in-place rollback: the n-th touched file's copy from the
backup is written beside it, not yet renamed in),
``download.chunk:<n>`` (after the n-th chunk of a download was written),
``process.spawned`` (process service manager: the agent was spawned, its pid
file not yet written).
Actions: ``kill`` (the process SIGKILLs itself), ``fail`` (the step raises
FaultInjectedError, which the executor treats like any failing effect).
"""

from __future__ import annotations

import os
import signal

from agent_runtime.errors import FaultInjectedError

__all__ = ["ENV_VAR", "hit", "parse_faults"]

ENV_VAR = "AGENT_RUNTIME_FAULT"


def parse_faults(text: str) -> dict[str, str]:
    """Point → action from the env var's text; unknown actions raise ValueError."""
    faults: dict[str, str] = {}
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        point, sep, action = item.rpartition("=")
        if not sep:
            point, action = item, "kill"
        if action not in ("kill", "fail"):
            raise ValueError(f"{ENV_VAR}: action {action!r} in {item!r}; allowed: kill, fail")
        faults[point] = action
    return faults


def hit(point: str) -> None:
    """Trigger the fault configured for ``point``, if any.

    Raises FaultInjectedError for ``fail``; never returns for ``kill``.
    """
    text = os.environ.get(ENV_VAR)
    if not text:
        return
    action = parse_faults(text).get(point)
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "fail":
        raise FaultInjectedError(f"fault injected at {point}")
