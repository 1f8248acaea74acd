"""`engine apply`: record rollouts from a saved plan (bound to the desired state) or a fresh plan.

Exit codes (docs/plan.md): 0 applied, or nothing to apply; 1 error, a stale
plan, an unsigned release without ``--allow-unsigned``, a declined
confirmation, or with ``--wait`` a rollout that did not complete; 3 with
``--strict`` when the fleet drifted since the plan in a way that changes what
it does to a device.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import EngineError
from inventory.errors import InventoryError

if TYPE_CHECKING:
    from engine.plan_drift import Drift
    from engine.rollouts import RolloutStatus
    from engine.rollouts.record import ApplyResult
    from engine.ssh import AgentlessRelay
    from engine.store import Store
    from inventory.loader import OperatorRepo
    from states.plan import Plan

__all__ = ["register", "run"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_DRIFT = 3
#: Drifted devices listed one per line before "... and N more".
_DRIFT_LINES = 20


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `apply` subcommand."""
    p = subparsers.add_parser(
        "apply",
        help="record rollouts of a plan (saved, or made now) in the store",
        description="Record one rollout per group moving to a new release: a saved plan "
        "(`engine plan --out FILE`) is applied while the operator repo's files and the "
        "store are the ones it was made from, showing what the devices reported since "
        "(drift); without one, plan now and ask for confirmation. `engine serve` "
        "then moves the rollouts wave by wave. Exit codes: 0 applied or nothing to "
        "apply, 1 error/stale/declined (or --wait and a rollout did not complete), "
        "3 --strict and the drift changes the plan.",
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
        "--strict",
        action="store_true",
        help="refuse (exit 3) when devices drifted since the saved plan in a way that "
        "changes what it does to them",
    )
    p.add_argument(
        "--allow-unsigned",
        action="store_true",
        help="record rollouts of releases without a signature (devices refuse them)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON document (drift, rollouts recorded, warnings); needs --yes",
    )
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


def run(args: argparse.Namespace) -> int:
    """Run `engine apply`; the exit codes are in the module docstring."""
    from engine.plan_io import read_plan
    from engine.service.repo import load_repo, open_store

    out = _Output(args.json)
    if args.json and not args.yes:
        return out.error("--json prints no question to answer: pass --yes with it")
    if args.json and args.wait:
        return out.error("--json and --wait do not go together: follow with `engine status`")
    plan_path: Path | None = args.plan
    try:
        saved = read_plan(plan_path) if plan_path is not None else None
    except EngineError as e:
        return out.error(str(e))
    if args.directory is not None:
        root: Path = args.directory
    elif saved is not None:
        root = Path(saved.inventory.root)
    else:
        root = Path(".")
    if not root.is_dir():
        return out.error(f"{root} is not a directory (give the operator repo with -C DIR)")
    root = root.resolve()
    try:
        repo = load_repo(root)
        store = open_store(repo, args.state)
    except InventoryError as e:
        return out.error(f"the operator repo {root} has problems:\n{e.render()}")
    except EngineError as e:
        return out.error(str(e))
    relay = None
    if args.transport == "ssh":
        from engine.ssh import SshError, make_relay

        try:
            relay = make_relay(repo, server_url=args.server, known_hosts=args.known_hosts,
                               accept_new=args.accept_new)  # fmt: skip
        except (SshError, OSError) as e:
            return out.error(str(e))
        out.say(f"Checking in {len(relay.targets)} agentless device(s) over SSH …")
        for res in relay.round_all(sorted(relay.targets), forks=args.forks):
            if not res.ok:
                out.say(f"  {res.device}: {res.summary}")
    with store:
        return _apply(args, out, repo, store, saved, plan_path, root, relay)


def _apply(  # noqa: PLR0917 - the steps of one command, split for length
    args: argparse.Namespace,
    out: _Output,
    repo: OperatorRepo,
    store: Store,
    saved: Plan | None,
    plan_path: Path | None,
    root: Path,
    relay: AgentlessRelay | None,
) -> int:
    from engine.commands._progress import spinner
    from engine.plan_render import render_plan
    from engine.service.apply import (
        DriftError,
        StalePlanError,
        expired_releases,
        pending_changes,
        plan_to_apply,
        record_apply,
        unsigned_releases,
    )
    from fleetbase.clock import utc_now

    try:
        with spinner("planning and comparing with the fleet …", enabled=not args.json):
            chosen = plan_to_apply(repo, store, saved, strict=args.strict)
    except StalePlanError as e:
        lines = "\n".join(f"  - {reason}" for reason in e.reasons)
        return out.error(
            f"the plan {plan_path} no longer matches the desired state; nothing applied:\n"
            f"{lines}\n"
            f"Make a new one with `engine plan -C {root} --out {plan_path}`, "
            f"or run `engine apply -C {root}` to plan and apply now.",
            reasons=e.reasons,
        )
    except DriftError as e:
        out.drift(e.drift)
        return out.error(
            f"--strict: {e}; nothing applied. Review `engine plan -C {root}` and save a new plan.",
            code=EXIT_DRIFT,
        )
    except (EngineError, ValueError) as e:
        return out.error(str(e))
    plan = chosen.plan
    if not out.json:
        sys.stdout.write(render_plan(plan, colour=_colour()))
    if chosen.saved:
        out.drift(chosen.drift)
    changes = pending_changes(plan, repo)
    if changes.empty:
        out.say("\nNothing to apply: no group has devices to move to its release.")
        return out.done(applied=False)
    expired = expired_releases(plan, repo, changes.rollouts, utc_now())
    if expired:
        names = ", ".join(e.describe() for e in expired)
        return out.error(
            f"release {names}: devices refuse expired manifests; nothing applied. Release a "
            "new version, or give the manifest a later `expires` and re-sign it "
            "(`engine release sign`)."
        )
    unsigned = unsigned_releases(plan, repo)
    if unsigned and not args.allow_unsigned:
        names = ", ".join(unsigned)
        return out.error(
            f"release {names} has no signature (releases/<version>.yaml.sig) and devices "
            f"refuse unsigned releases; nothing applied. Sign it with `engine release sign "
            f"releases/{unsigned[0]}.yaml`, or pass --allow-unsigned to record it anyway."
        )
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
            return out.error(
                "stdin is not a terminal, so there is nobody to confirm; "
                "nothing applied. Pass --yes to apply without asking."
            )
        try:
            answer = input("\n" + question).strip().lower()
        except EOFError:
            answer = ""
        if answer not in ("y", "yes"):
            print("Apply cancelled; nothing recorded.", file=sys.stderr)
            return EXIT_ERROR
    try:
        result = record_apply(store, plan, repo)
    except EngineError as e:
        return out.error(f"{e}; nothing recorded")
    out.recorded(result)
    if relay is not None and result.rollouts:
        from engine.ssh import drive_rollouts

        ids = [r.id for r in result.rollouts]
        ssh_devices = sorted(relay.targets)
        statuses = drive_rollouts(relay, store, ids, ssh_devices, forks=args.forks,
                                  poll=args.poll, timeout=args.timeout)  # fmt: skip
        return _summary(statuses)
    if not args.wait or not result.rollouts:
        return out.done(applied=True)
    return _follow(store, [r.id for r in result.rollouts], args.poll)


def _colour() -> bool:
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


class _Output:
    """What `engine apply` tells: text for people, or one JSON document with ``--json``."""

    def __init__(self, as_json: bool) -> None:
        self.json = as_json
        self.doc: dict[str, Any] = {
            "applied": False,
            "drift": [],
            "rollouts": [],
            "unchanged": [],
            "warnings": [],
        }

    def say(self, line: str) -> None:
        if not self.json:
            print(line)

    def error(self, message: str, *, code: int = EXIT_ERROR, **extra: Any) -> int:
        if self.json:
            self.doc.update(error=message, exit_code=code, **extra)
            print(json.dumps(self.doc, indent=2))
        else:
            print(f"engine apply: {message}", file=sys.stderr)
        return code

    def done(self, *, applied: bool) -> int:
        if self.json:
            self.doc.update(applied=applied, exit_code=EXIT_OK)
            print(json.dumps(self.doc, indent=2))
        return EXIT_OK

    def drift(self, drift: Drift) -> None:
        self.doc["drift"] = [
            {
                "device": d.device,
                "component": d.component,
                "kind": d.kind.value,
                "then": d.then,
                "now": d.now,
                "action_then": d.action_then,
                "action_now": d.action_now,
                "changes_plan": d.changes_plan,
            }
            for d in drift.devices
        ]
        if self.json:
            return
        if not drift.devices:
            print("\nNo drift: the devices report what they reported when the plan was made.")
            return
        counts = ", ".join(f"{n} {kind}" for kind, n in drift.counts().items())
        changing = len(drift.changes_plan)
        print(f"\nDrift since the plan: {counts}; {changing} would now be planned differently.")
        for d in drift.devices[:_DRIFT_LINES]:
            print(f"  ~ {d.describe()}")
        if len(drift.devices) > _DRIFT_LINES:
            print(f"  … and {len(drift.devices) - _DRIFT_LINES} more")
        print("The saved plan is applied as reviewed; rollouts skip devices already there.")

    def recorded(self, result: ApplyResult) -> None:
        self.doc["rollouts"] = [
            {
                "id": r.id,
                "name": r.name,
                "group": r.group,
                "release": r.release,
                "devices": r.devices,
                "pending": r.pending,
                "succeeded": r.succeeded,
                "excluded": r.excluded + r.overridden,
                "superseded": list(r.superseded),
                "after": list(r.after),
            }
            for r in result.rollouts
        ]
        self.doc["unchanged"] = list(result.unchanged)
        warnings = [
            f"release {version} has no signature (releases/{version}.yaml.sig); "
            "devices refuse unsigned releases: sign it with `engine release sign`"
            for version in result.unsigned
        ]
        self.doc["warnings"] = warnings
        if self.json:
            return
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
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)


def _follow(store: Store, ids: list[int], poll: float) -> int:
    """Follow the rollouts until each settles (live on a terminal, lines in logs); 0 when all
    completed."""
    from engine.commands._progress import follow
    from engine.service.apply import follow_rollouts

    print()
    statuses = follow(lambda: follow_rollouts(store, ids), poll, live=sys.stdout.isatty())
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
