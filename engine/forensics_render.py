"""Rich renderings of one device (report, heartbeat, transaction, timeline) and of a rollout's
devices with their last step.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from engine.rollouts.forensics import DeviceDetail, RolloutDevicesPage

__all__ = ["render_device", "render_rollout_devices"]

_STATUS_STYLE = {"failed": "bold red", "ok": "green", "started": "yellow"}


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def _pairs(title: str, rows: list[tuple[str, object]]) -> Table:
    table = Table(title=title, title_justify="left", box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        shown = (
            _when(value) if isinstance(value, datetime) else "-" if value is None else str(value)
        )
        table.add_row(key, Text(shown))
    return table


def render_device(detail: DeviceDetail) -> RenderableType:
    """The device's state and its event timeline, newest event first."""
    parts: list[RenderableType] = []
    registry = (
        "revoked" if detail.revoked_at else ("enrolled" if detail.enrolled else "not enrolled")
    )
    parts.append(
        _pairs(
            f"device {detail.device}",
            [
                ("platform", detail.platform),
                ("registry", registry),
                ("online", "yes" if detail.online else "no"),
            ],
        )
    )
    if detail.report is not None:
        r = detail.report
        parts.append(
            _pairs(
                "report",
                [
                    ("agent version", r.agent_version),
                    ("known good", r.known_good),
                    ("runtime", r.runtime()),
                    ("last seen", r.last_seen),
                    ("last result", r.last_result),
                    ("agent running", r.agent_running),
                ],
            )
        )
    if detail.heartbeat is not None:
        h = detail.heartbeat
        parts.append(_pairs("heartbeat", [("version", h.version), ("at", h.at), ("pid", h.pid)]))
    if detail.transaction is not None:
        t = detail.transaction
        parts.append(
            _pairs(
                "transaction",
                [
                    ("target", t.target),
                    ("phase", t.phase),
                    ("attempts", t.attempts),
                    ("result", t.result),
                    ("detail", t.detail),
                ],
            )
        )
    if detail.rollouts:
        table = Table(title="rollouts", title_justify="left", box=None, pad_edge=False)
        for name in ("rollout", "rollout state", "wave", "device state", "attempts", "reason"):
            table.add_column(name)
        for m in detail.rollouts:
            table.add_row(
                f"#{m.rollout_id} {m.rollout}",
                m.rollout_state.value,
                str(m.wave),
                m.state.value,
                str(m.attempts),
                Text(m.reason or "-"),
            )
        parts.append(table)
    if detail.performance:
        table = Table(title="performance", title_justify="left", box=None, pad_edge=False)
        for name in ("release", "samples", "cpu % (mean)", "rss MB (mean)", "rss MB (last)"):
            table.add_column(name)
        for p in detail.performance:
            cpu = "-" if p.cpu_percent is None else f"{p.cpu_percent:.1f}"
            table.add_row(
                p.version,
                str(p.samples),
                cpu,
                f"{p.rss_mean_bytes / 1e6:.1f}",
                f"{p.rss_last_bytes / 1e6:.1f}",
            )
        parts.append(table)
    parts.append(_timeline(detail))
    return Group(*parts)


def _timeline(detail: DeviceDetail) -> RenderableType:
    if not detail.events:
        return Text("no step events")
    shown = len(detail.events)
    title = f"timeline ({shown} of {detail.events_total} events, newest first)"
    table = Table(title=title, title_justify="left", box=None, pad_edge=False)
    for name in ("at", "target", "step", "status", "detail"):
        table.add_column(name)
    for e in detail.events:
        table.add_row(
            _when(e.at),
            e.target,
            e.step,
            Text(e.status, style=_STATUS_STYLE.get(e.status, "")),
            Text(e.detail or ""),
        )
    return table


def render_rollout_devices(page: RolloutDevicesPage) -> RenderableType:
    """The rollout's devices by state and a page of them with their last step."""
    counts = ", ".join(f"{state} {n}" for state, n in page.states.items()) or "none"
    head = Text(f"devices of #{page.rollout_id} {page.rollout} by state: {counts}")
    table = Table(box=None, pad_edge=False)
    for name in ("device", "wave", "state", "attempts", "runtime", "last step", "detail"):
        table.add_column(name, no_wrap=name == "runtime")
    for d in page.devices:
        step = "-"
        detail = d.reason or ""
        if d.last_step is not None:
            s = d.last_step
            step = f"{s.step} {s.status} ({s.target}, {_when(s.at)})"
            if s.detail:
                detail = f"{detail}\n{s.detail}" if detail else s.detail
        table.add_row(
            d.device,
            str(d.wave),
            d.state.value,
            str(d.attempts),
            d.runtime(),
            Text(step),
            Text(detail),
        )
    end = page.offset + len(page.devices)
    foot = Text(
        f"devices {page.offset + 1 if page.devices else 0}-{end} of {page.total}"
        + (" (--offset/--limit for more)" if end < page.total else ""),
        style="dim",
    )
    return Group(head, table, foot)
