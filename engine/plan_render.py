"""The human-readable `engine plan` output, in the spirit of `terraform plan`."""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC
from typing import Any

from states.plan import CHANGING_ACTIONS, Action, DevicePlan, Plan, RolloutPlan

__all__ = ["SYMBOLS", "render_plan", "summary_line"]

#: One-character marker of each action, as in `terraform plan`.
SYMBOLS: Mapping[Action, str] = {
    Action.UPDATE: "~",
    Action.INSTALL: "+",
    Action.ADOPT: "@",
    Action.ROLLBACK: "<",
    Action.RECONFIGURE: "*",
    Action.BLOCKED: "!",
    Action.PINNED: "=",
    Action.NOOP: " ",
}

_COLOURS: Mapping[Action, str] = {
    Action.UPDATE: "33",  # yellow
    Action.INSTALL: "32",  # green
    Action.ADOPT: "34",  # blue
    Action.ROLLBACK: "35",  # magenta
    Action.RECONFIGURE: "33",  # yellow, like an update
    Action.BLOCKED: "31",  # red
    Action.PINNED: "36",  # cyan
    Action.NOOP: "2",  # dim
}

#: Summary phrases in the order they are printed.
_PHRASES: tuple[tuple[str, str], ...] = (
    ("update", "to update"),
    ("install", "to install"),
    ("adopt", "to adopt"),
    ("rollback", "to roll back"),
    ("reconfigure", "to reconfigure"),
    ("noop", "unchanged"),
    ("pinned", "pinned"),
    ("blocked", "blocked"),
)

#: Devices listed per rollout without --verbose.
DEFAULT_LIMIT = 10

_ORDER = {
    Action.ROLLBACK: 0,
    Action.UPDATE: 1,
    Action.INSTALL: 2,
    Action.ADOPT: 3,
    Action.RECONFIGURE: 4,
    Action.BLOCKED: 5,
    Action.PINNED: 6,
    Action.NOOP: 7,
}


class _Style:
    def __init__(self, colour: bool) -> None:
        self.colour = colour

    def paint(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.colour else text

    def bold(self, text: str) -> str:
        return self.paint(text, "1")


def _phrase(counts: Mapping[str, int], *, all_zero: str = "no devices") -> str:
    parts = [f"{counts.get(key, 0)} {words}" for key, words in _PHRASES if counts.get(key, 0)]
    return ", ".join(parts) if parts else all_zero


def summary_line(plan: Plan) -> str:
    """``Plan: 12 to update, 3 to install, ...; 3 unmanaged.`` from the plan's summary."""
    counts = plan.summary
    # Blocked devices that join their rollout and wait for a newer runtime (requires:).
    waiting = sum(1 for d in plan.devices if d.awaits_runtime is not None)
    parts = [
        f"{counts.get(key, 0)} {words}"
        + (f" ({waiting} waiting for their runtime)" if key == "blocked" and waiting else "")
        for key, words in _PHRASES
        # adopt only where there are field installs, reconfigure where config is managed
        if key not in ("adopt", "reconfigure") or counts.get(key, 0)
    ]
    return f"Plan: {', '.join(parts)}; {counts.get('unmanaged', 0)} unmanaged."


def _policy_text(rollout: RolloutPlan) -> str:
    policy = rollout.policy
    waves = "/".join(f"{w:g}" for w in policy.get("waves", []))
    parts = [f"waves {waves}%"]
    for key in ("max_parallel", "soak", "max_failure_rate"):
        if key in policy:
            parts.append(f"{key} {policy[key]}")
    failure = policy.get("on_failure")
    if isinstance(failure, dict):
        action, scope = failure.get("action", "halt"), failure.get("rollback", "rollout")
    else:
        action, scope = failure or "halt", "rollout"
    parts.append(f"on_failure {action}" + (f", rollback {scope}" if action == "halt" else ""))
    window: dict[str, Any] | None = rollout.maintenance_window
    if window:
        parts.append(
            f"window '{window['cron']}' for {window['duration']} {window.get('timezone', 'UTC')}"
        )
    return ", ".join(parts)


def _device_line(d: DevicePlan, width: int, style: _Style) -> str:
    symbol = style.paint(SYMBOLS[d.action], _COLOURS[d.action])
    action = style.paint(f"{d.action.value:<8}", _COLOURS[d.action])
    wave = f"  [wave {d.wave}]" if d.wave is not None and d.action is not Action.BLOCKED else ""
    return f"    {symbol} {d.device:<{width}}  {action} {d.reason}{wave}"


def _diff_lines(d: DevicePlan) -> list[str]:
    """The device's config diff (``engine plan --diff``), indented under its line."""
    if not d.config_diff:
        return []
    return [f"        {line}" for text in d.config_diff.values() for line in text.splitlines()]


#: Actions by identity: ``Enum.__hash__`` is Python code, and this runs for every device.
_CHANGING = frozenset(map(id, CHANGING_ACTIONS))
_HELD = frozenset(map(id, (Action.BLOCKED, Action.PINNED)))
_ACTION_BY_ID = {id(action): action for action in Action}
_ORDER_BY_ID = {id(action): order for action, order in _ORDER.items()}


def _section(
    devices: list[DevicePlan], key: Callable[[DevicePlan], Any], verbose: bool, limit: int
) -> tuple[list[DevicePlan], int]:
    """The devices to list, in ``key`` order, and how many are left out."""
    if verbose:
        return sorted(devices, key=key), 0
    # The first few of a large rollout, without sorting all of it.
    shown = heapq.nsmallest(limit, devices, key=key)
    return shown, len(devices) - len(shown)


def _by_action(
    devices: Iterable[DevicePlan],
) -> tuple[list[DevicePlan], list[DevicePlan], list[DevicePlan]]:
    """Changing, blocked or pinned, and unchanged devices, each in the given order."""
    changing: list[DevicePlan] = []
    held: list[DevicePlan] = []
    unchanged: list[DevicePlan] = []
    for d in devices:
        action = id(d.action)
        if action in _CHANGING:
            changing.append(d)
        elif action in _HELD:
            held.append(d)
        elif d.action is Action.NOOP:
            unchanged.append(d)
    return changing, held, unchanged


def _device_lines(devices: list[DevicePlan], verbose: bool, style: _Style, limit: int) -> list[str]:
    """Changing devices by wave, then blocked and pinned ones, then (verbose) unchanged ones.

    Without ``verbose`` each of the first two sections shows at most ``limit``.
    """
    changing, held, unchanged = _by_action(devices)
    sections = [
        _section(
            changing, lambda d: (d.wave if d.wave is not None else -1, d.device), verbose, limit
        ),
        _section(held, lambda d: (_ORDER_BY_ID[id(d.action)], d.device), verbose, limit),
    ]
    if verbose:
        sections.append((sorted(unchanged, key=lambda d: d.device), 0))
    width = max((len(d.device) for shown, _ in sections for d in shown), default=0)
    lines: list[str] = []
    for shown, more in sections:
        for d in shown:
            lines.append(_device_line(d, width, style))
            lines.extend(_diff_lines(d))
        if more:
            lines.append(f"    ... {more} more; --verbose lists every device")
    if unchanged and not verbose:
        lines.append(f"    ({len(unchanged)} unchanged not listed)")
    return lines


def render_plan(
    plan: Plan, *, verbose: bool = False, colour: bool = False, limit: int = DEFAULT_LIMIT
) -> str:
    """The plan for a terminal: summary, each rollout's counts and waves, then devices.

    Without ``verbose`` each rollout lists its first ``limit`` changing or
    blocked devices and hides unchanged ones.
    """
    style = _Style(colour)
    by_rollout: dict[str | None, list[DevicePlan]] = {}
    for d in plan.devices:
        by_rollout.setdefault(d.rollout, []).append(d)
    for d in plan.runtime_devices:  # runtime rollouts have ids of their own (group@runtime-V)
        by_rollout.setdefault(d.rollout, []).append(d)

    lines = [style.bold(summary_line(plan)), ""]
    for rollout in plan.rollouts:
        devices = by_rollout.pop(rollout.id, [])
        counts = {
            _ACTION_BY_ID[action].value: n
            for action, n in Counter(id(d.action) for d in devices).items()
        }
        after = f"  after {', '.join(rollout.after)}" if rollout.after else ""
        lines.append(f"{style.bold(rollout.id)}{after}  ({_policy_text(rollout)})")
        if rollout.resolution:
            lines.append(f"  {rollout.resolution}")
        lines.append(f"  {_phrase(counts)}")
        for wave in rollout.waves:
            noun = "device" if wave.devices == 1 else "devices"
            lines.append(
                f"  wave {wave.index} {wave.percent:>5g}%: {wave.devices:>6} {noun}, "
                f"{wave.changing} changing"
            )
        lines.extend(_device_lines(devices, verbose, style, limit))
        lines.append("")

    pinned = by_rollout.pop(None, [])
    rest = [d for group in by_rollout.values() for d in group]
    if pinned or rest:
        lines.append(style.bold("Held on their pin"))
        lines.extend(_device_lines(pinned + rest, verbose, style, limit))
        lines.append("")
    if plan.unmanaged:
        names = plan.unmanaged if verbose else plan.unmanaged[:limit]
        more = len(plan.unmanaged) - len(names)
        tail = f", ... {more} more" if more else ""
        lines.append(f"Unmanaged (no pin and no group with a release): {', '.join(names)}{tail}")
    if plan.unknown_reports:
        names = plan.unknown_reports if verbose else plan.unknown_reports[:limit]
        more = len(plan.unknown_reports) - len(names)
        tail = f", ... {more} more" if more else ""
        lines.append(f"Reports from devices not in the inventory: {', '.join(names)}{tail}")

    inv = plan.inventory
    git = ""
    if inv.git_commit:
        git = f", git {inv.git_commit[:10]}{' (dirty)' if inv.git_dirty else ''}"
    state = plan.state
    latest = (
        state.latest_report.astimezone(UTC).strftime("%Y-%m-%dT%H:%MZ")
        if state.latest_report
        else "none"
    )
    lines.append(
        style.paint(
            f"Inventory {inv.digest[:12]}{git}; state {state.url or '(in memory)'}: "
            f"{state.reports} reports, latest {latest}",
            "2",
        )
    )
    return "\n".join(lines) + "\n"
