"""`engine plan`: compare the operator repo with device reports and print or save the plan."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from engine.commands._args import add_repo_option, add_state_option
from engine.errors import EngineError
from engine.plan_io import plan_json, write_plan_json
from engine.plan_render import render_plan
from fleetbase.gcpause import gc_paused
from inventory.errors import InventoryError
from states.plan import CHANGING_ACTIONS

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
    p.add_argument(
        "--diff",
        action="store_true",
        help="show each device's config file changes (unified diff, secrets masked)",
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


def run(args: argparse.Namespace) -> int:
    """Run `engine plan`; returns the exit code (see --detailed-exitcode)."""
    # One short process whose millions of objects (repo, reports, plan) live to its
    # end and form no cycles: the collector would only walk them again and again.
    with gc_paused():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from engine.commands._progress import spinner
    from engine.service.plan import plan_repo

    root: Path = args.directory
    if not root.is_dir():
        return _error(f"{root} is not a directory (give the operator repo with -C DIR)")
    try:
        with spinner(f"planning {root} …", enabled=not args.json):
            plan = plan_repo(
                root.resolve(),
                state=args.state,
                group=args.group,
                device=args.device,
                diff=args.diff,
            )
    except InventoryError as e:
        print(f"engine plan: the operator repo {root} has problems:", file=sys.stderr)
        print(e.render(), file=sys.stderr)
        return EXIT_ERROR
    except (EngineError, ValueError) as e:
        return _error(str(e))

    if args.out is not None or args.json:
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
