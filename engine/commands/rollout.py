"""`engine rollout pause|resume|abort ID`: operator control of one rollout."""

from __future__ import annotations

import argparse
import getpass
import sys
from datetime import UTC, datetime

from engine.commands._args import add_store_options, state_url
from engine.errors import EngineError

__all__ = ["register", "run"]

EXIT_OK = 0
EXIT_ERROR = 1

_HELP = {
    "pause": "stop handing out the release; devices already updating finish",
    "resume": "reopen a paused rollout",
    "abort": "stop for good: nothing more is handed out, rollbacks included",
}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `rollout` subcommand with pause, resume and abort."""
    parser = subparsers.add_parser(
        "rollout",
        help="pause, resume or abort a rollout",
        description="Change a rollout's state in the store; `engine serve` picks it up "
        "on its next tick and check-in.",
    )
    actions = parser.add_subparsers(dest="rollout_action", metavar="ACTION", required=True)
    for name, text in _HELP.items():
        p = actions.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        p.add_argument("rollout", metavar="ID", help="rollout number, or group@release")
        add_store_options(p)
        p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run `engine rollout ACTION ID`; 0 when done, 1 when refused."""
    from engine.rollouts import RolloutAction, act_on_rollout, resolve_rollout
    from engine.store import Store

    action = RolloutAction(args.rollout_action)
    try:
        by = getpass.getuser()
    except (KeyError, OSError):
        by = "operator"
    try:
        with Store.open(state_url(args.directory, args.state)) as store, store.write() as conn:
            rollout_id = resolve_rollout(conn, args.rollout)
            act_on_rollout(conn, rollout_id, action, datetime.now(UTC), by=by)
    except EngineError as e:
        print(f"engine rollout {args.rollout_action}: {e}", file=sys.stderr)
        return EXIT_ERROR
    done = {"pause": "paused", "resume": "resumed", "abort": "aborted"}[args.rollout_action]
    print(f"rollout #{rollout_id} {done}")
    return EXIT_OK
