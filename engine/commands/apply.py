"""`engine apply`: record rollouts from a saved plan (refusing a stale one) or a fresh plan."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import EngineError
from inventory.errors import InventoryError

if TYPE_CHECKING:
    from engine.rollouts import RolloutStatus
    from engine.store import Store

__all__ = ["register", "run"]

EXIT_OK = 0
EXIT_ERROR = 1


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `apply` subcommand."""
    p = subparsers.add_parser(
        "apply",
        help="record rollouts of a plan (saved, or made now) in the store",
        description="Record one rollout per group moving to a new release: a saved plan "
        "(`engine plan --out FILE`) is refused when the operator repo or the reports "
        "changed since; without one, plan now and ask for confirmation. `engine serve` "
        "then moves the rollouts wave by wave.",
    )
    p.add_argument("plan", nargs="?", type=Path, metavar="PLAN.json", help="a saved plan")
    p.add_argument(
        "-C",
        dest="directory",
        type=Path,
        default=None,
        metavar="DIR",
        help="operator repo (default: the saved plan's, else the current directory)",
    )
    p.add_argument("--yes", "-y", action="store_true", help="apply without asking")
    p.add_argument(
        "--wait",
        action="store_true",
        help="follow the rollouts until each completes, halts, pauses or is aborted",
    )
    p.add_argument(
        "--state",
        metavar="URL",
        help="store URL (default: $ENGINE_STATE_URL, engine.yaml's state, DIR/.engine/state.db)",
    )
    p.add_argument("--poll", type=float, default=1.0, metavar="SECONDS", help=argparse.SUPPRESS)
    ssh = p.add_argument_group("agentless devices (docs/ssh.md)")
    ssh.add_argument(
        "--transport",
        choices=("http", "ssh"),
        default="http",
        help="ssh: also converge the devices with inventory ssh settings over SSH, through "
        "engine serve's rollout controller, until the rollouts settle (default: http, devices "
        "pull their plans themselves)",
    )
    ssh.add_argument("--server", metavar="URL", help="engine serve (default: server_url)")
    ssh.add_argument("--forks", type=int, default=10, metavar="N", help="hosts at once (10)")
    ssh.add_argument("--known-hosts", type=Path, metavar="FILE", help="known_hosts for every host")
    ssh.add_argument("--accept-new", action="store_true", help="record unknown host keys")
    ssh.add_argument(
        "--timeout", type=float, default=3600.0, metavar="SECONDS", help="stop driving after this"
    )
    p.set_defaults(func=run)


def _error(message: str) -> int:
    print(f"engine apply: {message}", file=sys.stderr)
    return EXIT_ERROR


def _colour() -> bool:
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def run(args: argparse.Namespace) -> int:
    """Run `engine apply`; 0 when recorded (and, with --wait, completed), else 1."""
    from engine.plan_io import read_plan
    from engine.plan_render import render_plan
    from engine.service.apply import (
        StalePlanError,
        pending_changes,
        plan_to_apply,
        record_apply,
    )
    from engine.service.repo import load_repo, open_store

    plan_path: Path | None = args.plan
    try:
        saved = read_plan(plan_path) if plan_path is not None else None
    except EngineError as e:
        return _error(str(e))
    if args.directory is not None:
        root: Path = args.directory
    elif saved is not None:
        root = Path(saved.inventory.root)
    else:
        root = Path(".")
    if not root.is_dir():
        return _error(f"{root} is not a directory (give the operator repo with -C DIR)")
    root = root.resolve()
    try:
        repo = load_repo(root)
        store = open_store(repo, args.state)
    except InventoryError as e:
        print(f"engine apply: the operator repo {root} has problems:", file=sys.stderr)
        print(e.render(), file=sys.stderr)
        return EXIT_ERROR
    except EngineError as e:
        return _error(str(e))
    relay = None
    if args.transport == "ssh":
        from engine.ssh import SshError, make_relay

        try:
            relay = make_relay(repo, server_url=args.server, known_hosts=args.known_hosts,
                               accept_new=args.accept_new)  # fmt: skip
        except (SshError, OSError) as e:
            return _error(str(e))
        print(f"Checking in {len(relay.targets)} agentless device(s) over SSH …")
        for res in relay.round_all(sorted(relay.targets), forks=args.forks):
            if not res.ok:
                print(f"  {res.device}: {res.summary}")
    with store:
        try:
            plan = plan_to_apply(repo, store, saved)
        except StalePlanError as e:
            lines = "\n".join(f"  - {reason}" for reason in e.reasons)
            return _error(
                f"the plan {plan_path} is stale; nothing applied:\n{lines}\n"
                f"Make a new one with `engine plan -C {root} --out {plan_path}`, "
                f"or run `engine apply -C {root}` to plan and apply now."
            )
        except (EngineError, ValueError) as e:
            return _error(str(e))

        sys.stdout.write(render_plan(plan, colour=_colour()))
        changes = pending_changes(plan, repo)
        if changes.empty:
            print("\nNothing to apply: no group has devices to move to its release.")
            return EXIT_OK
        count, changing = len(changes.rollouts), changes.changing
        question = (
            f"Apply {count} change{'s' if count != 1 else ''} to "
            f"{changing} device{'s' if changing != 1 else ''}"
        )
        if changes.waiting:
            question += f" (and {changes.waiting} more once they report)"
        question += "? [y/N] "
        if not args.yes:
            if not sys.stdin.isatty():
                return _error(
                    "stdin is not a terminal, so there is nobody to confirm; "
                    "nothing applied. Pass --yes to apply without asking."
                )
            answer = input("\n" + question).strip().lower()
            if answer not in ("y", "yes"):
                print("Apply cancelled; nothing recorded.")
                return EXIT_ERROR
        try:
            result = record_apply(store, plan, repo)
        except EngineError as e:
            return _error(f"{e}; nothing recorded")
        print()
        for r in result.rollouts:
            extra = f", superseding #{', #'.join(map(str, r.superseded))}" if r.superseded else ""
            if r.after:
                extra += f"; waits for {', '.join(r.after)}"
            if r.not_waiting:
                extra += (
                    f"; not waiting for {', '.join(r.not_waiting)} "
                    f"(no rollout of {r.release} there)"
                )
            print(
                f"Recorded rollout #{r.id} {r.name}: {r.devices} devices "
                f"({r.pending} to move, {r.succeeded} already there, "
                f"{r.excluded + r.overridden} excluded){extra}"
            )
        for message in result.unchanged:
            print(message)
        for version in result.unsigned:
            print(
                f"warning: release {version} has no signature (releases/{version}.yaml.sig); "
                "devices refuse unsigned releases: sign it with `engine release sign`",
                file=sys.stderr,
            )
        if relay is not None and result.rollouts:
            from engine.ssh import drive_rollouts

            ids = [r.id for r in result.rollouts]
            ssh_devices = sorted(relay.targets)
            statuses = drive_rollouts(relay, store, ids, ssh_devices, forks=args.forks,
                                      poll=args.poll, timeout=args.timeout)  # fmt: skip
            return _summary(statuses)
        if not args.wait or not result.rollouts:
            return EXIT_OK
        return _follow(store, [r.id for r in result.rollouts], args.poll)


def _follow(store: Store, ids: list[int], poll: float) -> int:
    """Show the rollouts live until each settles; 0 when all completed."""
    from rich.console import Console
    from rich.live import Live

    from engine.service.apply import follow_rollouts
    from engine.status_render import render_rollouts

    console = Console(highlight=False)
    statuses, settled = follow_rollouts(store, ids)
    with Live(render_rollouts(statuses, None), console=console, refresh_per_second=4) as live:
        while not settled:
            time.sleep(poll)
            statuses, settled = follow_rollouts(store, ids)
            live.update(render_rollouts(statuses, None))
    if not console.is_terminal:
        console.line()  # Live's last frame ends without a newline when not on a terminal
    return _summary(statuses)


def _summary(statuses: list[RolloutStatus]) -> int:
    """One line per rollout; 0 when every one completed."""
    unfinished = 0
    for s in statuses:
        totals = s.totals
        print(
            f"#{s.id} {s.name}: {s.state.value}; "
            f"{totals['succeeded']} succeeded, {totals['failed']} failed, "
            f"{totals['rolled_back']} rolled back, {totals['offline']} offline"
            + (f" ({s.reason})" if s.reason and s.state.value != "completed" else "")
        )
        if s.state.value != "completed":
            unfinished += 1
    return EXIT_OK if unfinished == 0 else EXIT_ERROR
