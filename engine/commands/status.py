"""`engine status`: rollouts with per-wave counts, and the fleet's agent versions."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from rich.console import Console, Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from engine.errors import EngineError

if TYPE_CHECKING:
    from engine.rollouts.status import RolloutStatus

from engine.commands._args import add_store_options, state_url

__all__ = ["register", "render_rollouts", "run"]

EXIT_OK = 0
EXIT_ERROR = 1

_STATE_STYLE = {
    "waiting": "cyan",
    "active": "yellow",
    "paused": "magenta",
    "halted": "bold red",
    "completed": "green",
    "aborted": "red",
    "superseded": "dim",
}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `status` subcommand."""
    p = subparsers.add_parser(
        "status",
        help="show rollouts, their waves, and the fleet's versions",
        description="Show each rollout with its waves: devices pending, in progress, "
        "succeeded, failed, rolled back, offline; and how many devices run each agent "
        "version. Reads the store directly, so it works while `engine serve` is down.",
    )
    add_store_options(p)
    p.add_argument("--json", action="store_true", help="print one JSON document, nothing else")
    p.add_argument("--rollout", metavar="ID", help="only this rollout (number or group@release)")
    p.set_defaults(func=run)


#: Table columns; closed waves are dimmed.
_COLUMNS = (
    "wave",
    "devices",
    "pending",
    "in\nprogress",
    "succeeded",
    "failed",
    "rolled\nback",
    "offline",
    "excluded",
)


def _bar(done: int, total: int) -> ProgressBar:
    return ProgressBar(total=max(total, 1), completed=done, width=60)


def render_rollouts(
    statuses: Sequence[RolloutStatus], versions: dict[str, int] | None
) -> RenderableType:
    """Rich tables of rollouts and, when given, the fleet's versions."""
    parts: list[RenderableType] = []
    for status in statuses:
        style = _STATE_STYLE.get(status.state.value, "")
        title = Text.assemble(
            (f"#{status.id} {status.name}", "bold"),
            "  ",
            (status.state.value, style),
            f"  wave {status.current_wave + 1}/{len(status.waves)}"
            if any(w.open for w in status.waves)
            else f"  no wave open (of {len(status.waves)})",
            "  window open" if status.window_open else "  window closed",
        )
        table = Table(
            title=title,
            title_justify="left",
            box=None,
            header_style="bold",
            padding=(0, 0, 0, 1),
            pad_edge=False,
        )
        for name in _COLUMNS:
            table.add_column(name, justify="right", min_width=max(map(len, name.split("\n"))))
        for w in status.waves:
            table.add_row(
                f"{w.index} {w.percent:g}%",
                str(w.devices),
                str(w.pending),
                str(w.in_progress),
                str(w.succeeded),
                str(w.failed),
                str(w.rolled_back),
                str(w.offline),
                str(w.excluded),
                style=None if w.open else "dim",
            )
        parts.append(table)
        counted = sum(w.devices - w.excluded for w in status.waves)
        parts.append(_bar(status.totals["succeeded"], counted))
        if status.reason:
            parts.append(Text(f"  {status.reason}", style="dim"))
    if not statuses:
        parts.append(Text("No rollouts recorded; `engine apply` records them."))
    if versions is not None:
        vt = Table(title="Fleet versions", title_justify="left")
        vt.add_column("agent version")
        vt.add_column("devices", justify="right")
        for version, count in versions.items():
            vt.add_row(version, str(count))
        parts.append(vt)
    return Group(*parts)


def run(args: argparse.Namespace) -> int:
    """Run `engine status`; 0, or 1 when the store or the rollout cannot be read."""
    from engine.rollouts.status import fleet_status, resolve_rollout
    from engine.store import Store

    now = datetime.now(UTC)
    try:
        with Store.open(state_url(args.directory, args.state)) as store, store.read() as conn:
            rollout_id = resolve_rollout(conn, args.rollout) if args.rollout else None
            status = fleet_status(conn, now=now, rollout_id=rollout_id)
    except EngineError as e:
        print(f"engine status: {e}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        sys.stdout.write(status.model_dump_json(indent=2) + "\n")
        return EXIT_OK
    console = Console(highlight=False)
    console.print(render_rollouts(status.rollouts, status.versions))
    return EXIT_OK
