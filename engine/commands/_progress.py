"""Progress of long commands: a live view on a terminal, one line per change in logs.

``--json`` commands show neither: their stdout carries one JSON document only.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.rollouts import RolloutStatus

__all__ = ["follow", "rollout_line", "spinner"]


def rollout_line(s: RolloutStatus) -> str:
    """One line of a rollout's progress, e.g. ``#3 fleet@1.1.0: active, wave 2/3; 4 succeeded``."""
    t = s.totals
    text = (
        f"#{s.id} {s.name}: {s.state.value}, wave {s.current_wave + 1}/{len(s.waves)}; "
        f"{t.get('succeeded', 0)} succeeded, {t.get('in_progress', 0)} in progress, "
        f"{t.get('failed', 0)} failed, {t.get('rolled_back', 0)} rolled back"
    )
    if s.reason and s.state.value != "active":
        text += f" ({s.reason})"
    return text


def follow(
    poll: Callable[[], tuple[list[RolloutStatus], bool]],
    interval: float,
    *,
    live: bool,
) -> list[RolloutStatus]:
    """Poll rollouts until ``poll`` says they settled; return their last statuses.

    ``live``: a rich live view (a terminal). Otherwise one timestamped line
    each time a rollout's state, wave or counts change, flushed at once, so a
    CI log shows progress as it happens.
    """
    statuses, settled = poll()
    if live:
        from rich.console import Console
        from rich.live import Live

        from engine.status_render import render_rollouts

        console = Console(highlight=False)
        with Live(render_rollouts(statuses, None), console=console, refresh_per_second=4) as view:
            while not settled:
                time.sleep(interval)
                statuses, settled = poll()
                view.update(render_rollouts(statuses, None))
        return statuses
    shown: dict[int, str] = {}
    while True:
        for s in statuses:
            line = rollout_line(s)
            if shown.get(s.id) != line:
                shown[s.id] = line
                print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)
        if settled:
            return statuses
        time.sleep(interval)
        statuses, settled = poll()


@contextmanager
def spinner(message: str, *, enabled: bool) -> Iterator[None]:
    """Show ``message`` with a spinner on stderr while the block runs (when ``enabled``).

    Enabled only on a terminal and without ``--json``; otherwise silent.
    """
    if not enabled or not sys.stderr.isatty():
        yield
        return
    from rich.console import Console

    with Console(stderr=True).status(message):
        yield
