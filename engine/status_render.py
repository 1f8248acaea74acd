"""Rich renderings of rollout status: per-wave tables, progress bars, the fleet's versions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.console import Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from engine.rollouts.performance import ReleasePerformance
    from engine.rollouts.status import RolloutStatus

__all__ = ["render_rollouts"]

_STATE_STYLE = {
    "waiting": "cyan",
    "active": "yellow",
    "paused": "magenta",
    "halted": "bold red",
    "completed": "green",
    "aborted": "red",
    "superseded": "dim",
}


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
    statuses: Sequence[RolloutStatus],
    versions: dict[str, int] | None,
    performance: Sequence[ReleasePerformance] = (),
) -> RenderableType:
    """Rich tables of rollouts and, when given, the fleet's versions and the agent's cost
    per release."""
    parts: list[RenderableType] = []
    for status in statuses:
        style = _STATE_STYLE.get(status.state.value, "")
        title = Text.assemble(
            (f"#{status.id} {status.name}", "bold"),
            f" (channel {status.channel})" if status.channel else "",
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
    if performance:
        parts.append(render_performance(performance))
    return Group(*parts)


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value / 1e6:.1f} MB"


def render_performance(rows: Sequence[ReleasePerformance]) -> Table:
    """The agent's CPU and memory per release, and the change against the release before."""
    t = Table(title="Agent cost by release (median / p95 over devices)", title_justify="left")
    for name in ("release", "devices", "CPU %", "RSS", "vs previous (same devices)"):
        t.add_column(name, justify="right" if name in ("devices", "CPU %", "RSS") else "left")
    for r in rows:
        change = "-"
        if r.previous is not None and r.same_devices:
            change = (
                f"{r.previous}, {r.same_devices} devices: CPU {_num(r.cpu_change, '+.0%')}, "
                f"RSS {_num(r.rss_change, '+.0%')}"
            )
        t.add_row(
            r.release,
            str(r.devices),
            f"{_num(r.cpu_percent_median, '.1f')} / {_num(r.cpu_percent_p95, '.1f')}",
            f"{_mb(r.rss_bytes_median)} / {_mb(r.rss_bytes_p95)}",
            change,
        )
    return t
