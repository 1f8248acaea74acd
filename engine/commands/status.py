"""`engine status`: rollouts with per-wave counts, and the fleet's agent versions."""

from __future__ import annotations

import argparse
import sys

from engine.commands._args import add_store_options, state_url
from engine.errors import EngineError

__all__ = ["register", "run"]

EXIT_OK = 0
EXIT_ERROR = 1


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


def run(args: argparse.Namespace) -> int:
    """Run `engine status`; 0, or 1 when the store or the rollout cannot be read."""
    from rich.console import Console

    from engine.service.status import read_status
    from engine.status_render import render_rollouts
    from engine.store import Store

    try:
        with Store.open(state_url(args.directory, args.state)) as store:
            status = read_status(store, rollout=args.rollout)
    except EngineError as e:
        print(f"engine status: {e}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        sys.stdout.write(status.model_dump_json(indent=2) + "\n")
        return EXIT_OK
    console = Console(highlight=False)
    console.print(render_rollouts(status.rollouts, status.versions, status.performance))
    return EXIT_OK
