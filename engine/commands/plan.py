"""`engine plan`: compare the operator repo with device reports and print or save the plan."""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from engine.commands._args import add_repo_option, add_state_option
from engine.errors import EngineError
from engine.gitinfo import git_info
from engine.plan_io import plan_json, write_plan_json
from engine.plan_render import render_plan
from engine.planner import plan_fleet
from fleetbase.gcpause import gc_paused
from inventory.errors import InventoryError
from states.plan import CHANGING_ACTIONS, InventoryRef, Plan, StateRef

__all__ = ["register", "run"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CHANGES = 2


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `plan` subcommand."""
    p = subparsers.add_parser(
        "plan",
        help="show what would change on each device",
        description="Compare the operator repo's desired state with what devices last "
        "reported and show, or save, the per-device plan.",
    )
    add_repo_option(p)
    p.add_argument(
        "--out", type=Path, metavar="FILE", help="save the plan as JSON (for `engine apply FILE`)"
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print the plan as one JSON document on stdout, nothing else",
    )
    p.add_argument(
        "--detailed-exitcode",
        action="store_true",
        help="exit 0 when nothing changes, 2 when devices change, 1 on error",
    )
    p.add_argument("--group", metavar="G", help="only the devices of group G")
    p.add_argument("--device", metavar="D", help="only device D")
    add_state_option(p)
    p.add_argument(
        "--verbose", "-v", action="store_true", help="list every device, unchanged ones included"
    )
    p.set_defaults(func=run)


def _error(message: str) -> int:
    print(f"engine plan: {message}", file=sys.stderr)
    return EXIT_ERROR


def _colour() -> bool:
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def make_plan(
    root: Path,
    *,
    state: str | None = None,
    group: str | None = None,
    device: str | None = None,
    now: datetime | None = None,
) -> Plan:
    """Load the repo and its store and compute the plan (what `engine plan` prints).

    Raises InventoryError for a broken operator repo, EngineError (StoreError)
    for a store that cannot be read, and ValueError for an unknown --group or
    --device.
    """
    from engine.store import Store, redact_url, resolve_state_url
    from inventory.loader import load_operator_repo

    repo = load_operator_repo(root)
    if group is not None and group not in repo.inventory.groups:
        known = ", ".join(sorted(repo.inventory.groups)) or "none"
        raise ValueError(f"--group {group}: no such group in the inventory (groups: {known})")
    if device is not None and device not in repo.inventory.devices:
        raise ValueError(f"--device {device}: no such device in the inventory")
    url = resolve_state_url(repo.root, state, repo.settings.state)
    with Store.open(url) as store:
        # Digest first: a report arriving in between makes the saved plan look
        # stale (safe), never fresh with reports it did not see.
        count, digest, latest = store.reports_digest()
        reports = store.load_reports()
    git = git_info(repo.root)
    inventory_ref = InventoryRef(
        root=str(repo.root),
        digest=repo.digest,
        git_commit=git.commit if git else None,
        git_dirty=git.dirty if git else None,
    )
    state_ref = StateRef(
        url=redact_url(url), reports=count, reports_digest=digest, latest_report=latest
    )
    with gc_paused():
        return plan_fleet(
            repo,
            reports,
            now if now is not None else datetime.now(UTC),
            stale_after=repo.settings.stale_after,
            only_group=group,
            only_device=device,
            inventory_ref=inventory_ref,
            state_ref=state_ref,
        )


def run(args: argparse.Namespace) -> int:
    """Run `engine plan`; returns the exit code (see --detailed-exitcode)."""
    root: Path = args.directory
    if not root.is_dir():
        return _error(f"{root} is not a directory (give the operator repo with -C DIR)")
    try:
        plan = make_plan(root.resolve(), state=args.state, group=args.group, device=args.device)
    except InventoryError as e:
        print(f"engine plan: the operator repo {root} has problems:", file=sys.stderr)
        print(e.render(), file=sys.stderr)
        return EXIT_ERROR
    except (EngineError, ValueError) as e:
        return _error(str(e))

    if args.out is not None or args.json:
        with gc_paused():
            data = plan_json(plan)
        if args.out is not None:
            try:
                write_plan_json(data, args.out)
            except EngineError as e:
                return _error(str(e))
        if args.json:
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
    if not args.json:
        sys.stdout.write(render_plan(plan, verbose=args.verbose, colour=_colour()))
        if args.out is not None:
            sys.stdout.write(
                f"Saved the plan to {args.out}; apply it with: engine apply {args.out}\n"
            )
    changes = any(plan.summary.get(action.value, 0) for action in CHANGING_ACTIONS)
    if args.detailed_exitcode and changes:
        return EXIT_CHANGES
    return EXIT_OK
