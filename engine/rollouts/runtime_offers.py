"""What a device's runtime gets at check-in from a runtime rollout: the release to move to.

Called by ``offers.decide_offer`` with the device's open rows of runtime
rollouts (``component: runtime``); the agent's rows are decided there as
before. The runtime offer travels beside the agent's plan in the check-in
answer (``CheckinResponse.runtime``); a device takes it like a plan (its row
moves from offered to in_progress in the same durable write).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from engine.rollouts.model import DeviceState, RolloutState
from engine.rollouts.policy import parse_version
from inventory.models import MaintenanceWindow
from states.protocol import RuntimeOffer
from states.report import Report

__all__ = ["RUNTIME_RELEASES_PATH", "decide_runtime_offer", "split_rows"]

#: Where `engine serve` serves runtime releases: ``<path><version>/<target>/<file>``.
RUNTIME_RELEASES_PATH = "/runtime/releases/"

_OFFERING = (RolloutState.ACTIVE.value, RolloutState.COMPLETED.value)
_TAKING = (*_OFFERING, RolloutState.PAUSED.value)


def _same(a: str | None, b: str) -> bool:
    found = parse_version(a)
    return found is not None and found == parse_version(b)


def decide_runtime_offer(
    row: Any,
    report: Report,
    now: datetime,
    *,
    window: Callable[[str | None], MaintenanceWindow | None],
    in_window: Callable[[MaintenanceWindow | None, datetime], bool],
    started: datetime | None,
    failed_target: str | None,
) -> tuple[RuntimeOffer | None, bool]:
    """(the runtime offer, whether handing it out takes the device's row) for the device's
    chosen runtime rollout ``row`` (an ``offers._OfferRow``).

    Offered: inside the window, when the rollout is active or completed and the
    device's runtime is not the release yet (a take). In progress: the same offer
    again until the device reports the release or a failed attempt at it
    (``failed_target``) after it took the offer, so that a lost answer does not
    strand it. Nothing otherwise.
    """
    current = report.runtime_version
    offer = RuntimeOffer(
        version=row.release, rollout=row.name, releases=f"{RUNTIME_RELEASES_PATH}{row.release}/"
    )
    if _same(current, row.release):
        return None, False
    if row.state == DeviceState.OFFERED.value:
        if row.rollout_state not in _OFFERING or not in_window(window(row.maintenance_window), now):
            return None, False
        return offer, True
    if row.state == DeviceState.IN_PROGRESS.value:
        if row.rollout_state not in _TAKING:
            return None, False
        finished = started is None or report.last_seen > started
        if finished and _same(failed_target, row.release):
            return None, False  # it failed; the controller decides on a retry
        return offer, False
    return None, False


def split_rows(rows: Sequence[tuple[Any, ...]]) -> tuple[list[Any], list[Any]]:
    """(agent rows, runtime rows) of a device's open rollout rows (component last)."""
    agent: list[Any] = []
    runtime: list[Any] = []
    for r in rows:
        (runtime if r[13] == "runtime" else agent).append(r)
    return agent, runtime
