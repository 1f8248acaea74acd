"""`engine status`: rollouts with per-wave counts, the fleet's agent versions, and with
``--rollout`` the rollout's devices by state with their last step."""

from __future__ import annotations

import argparse
import json
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
    p.add_argument(
        "--rollout",
        metavar="ID",
        help="only this rollout (number or group@release), with its devices by state, each "
        "with its last step and the step's detail",
    )
    p.add_argument(
        "--device-state",
        dest="device_states",
        action="append",
        metavar="STATE",
        help="with --rollout: only devices in this state (repeatable): pending, offered, "
        "in_progress, succeeded, failed, timed_out, regressed, rollback, rolling_back, "
        "rolled_back, rollback_failed, excluded, overridden, cancelled",
    )
    p.add_argument(
        "--limit", type=_positive, default=50, help="with --rollout: devices shown (default 50)"
    )
    p.add_argument("--offset", type=_non_negative, default=0, help="with --rollout: skip this many")
    p.set_defaults(func=run)


def _positive(text: str) -> int:
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return min(value, 100_000)


def run(args: argparse.Namespace) -> int:
    """Run `engine status`; 0, or 1 when the store or the rollout cannot be read."""
    from rich.console import Console

    from engine.forensics_render import render_rollout_devices
    from engine.rollouts.model import DeviceState
    from engine.service.forensics import read_rollout_devices
    from engine.service.status import read_status
    from engine.status_render import render_rollouts
    from engine.store import Store

    if args.device_states and not args.rollout:
        print("engine status: --device-state needs --rollout ID", file=sys.stderr)
        return EXIT_ERROR
    try:
        states = [DeviceState(s) for s in args.device_states or ()]
    except ValueError as e:
        allowed = ", ".join(s.value for s in DeviceState)
        print(f"engine status: --device-state: {e}; allowed: {allowed}", file=sys.stderr)
        return EXIT_ERROR
    try:
        with Store.open(state_url(args.directory, args.state)) as store:
            status = read_status(store, rollout=args.rollout)
            page = None
            if args.rollout:
                page = read_rollout_devices(
                    store,
                    args.rollout,
                    states=states,
                    limit=args.limit,
                    offset=args.offset,
                )
    except EngineError as e:
        print(f"engine status: {e}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        document = status.model_dump(mode="json")
        if page is not None:
            document["devices"] = page.model_dump(mode="json")
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
        return EXIT_OK
    console = Console(highlight=False)
    console.print(render_rollouts(status.rollouts, status.versions, status.performance))
    if page is not None:
        console.print(render_rollout_devices(page))
    return EXIT_OK
