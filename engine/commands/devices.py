"""`engine devices enroll|invite|list|show|revoke|requests|approve|reject`: the device registry.

``enroll DEVICE --platform P`` registers a device and prints its new token
once (for provisioning a device without the fleet secret, or to readmit a
revoked one); ``invite DEVICE`` prints a single-use enrollment code for the
device's installer (stored hashed, with an expiry); ``revoke DEVICE`` makes
its token stop working; ``list`` shows every device; ``show DEVICE`` its report,
heartbeat, transaction, rollouts and event timeline; ``requests``, ``approve``
and ``reject`` handle enrolled devices asking to enroll again with the fleet
secret only (ADR 0010). These work with the
server down; a running server notices a revocation made here within its token
cache time (5 s).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime

from engine.commands._args import add_store_options, state_url
from engine.errors import EngineError
from engine.store import Store
from fleetbase.duration import parse_duration
from fleetbase.platform import Platform

__all__ = ["register"]

EXIT_OK = 0
EXIT_ERROR = 1


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `devices` subcommand and its actions."""
    parser = subparsers.add_parser(
        "devices",
        help="enroll, list or revoke devices of engine serve",
        description="Manage the devices that may talk to engine serve. Devices normally "
        "enroll themselves with the fleet's enrollment secret (.engine/enrollment.secret); "
        "these commands work on the store directly, with the server up or down.",
    )
    actions = parser.add_subparsers(dest="devices_action", metavar="ACTION", required=True)

    enroll = actions.add_parser(
        "enroll",
        help="register a device and print its new token (once)",
        description="Register DEVICE (or readmit a revoked one) with a new token and print "
        "the token once; only its sha256 is stored. Its previous token stops working. Put "
        "the token in the device's runtime config (token_file).",
    )
    enroll.add_argument("device", metavar="DEVICE")
    enroll.add_argument(
        "--platform", required=True, choices=[p.value for p in Platform], help="device platform"
    )
    enroll.add_argument("--json", action="store_true", help="print {device, token} as JSON")
    add_store_options(enroll)
    enroll.set_defaults(func=run_enroll)

    invite = actions.add_parser(
        "invite",
        help="print a single-use enrollment code for a device (once)",
        description="Issue a single-use enrollment code for DEVICE and print it once; only "
        "its sha256 is stored, with the expiry. The device's installer enrolls with it "
        "(install script --code, or server.enrollment_code_file in the device config). A new "
        "invite replaces the device's earlier one.",
    )
    invite.add_argument("device", metavar="DEVICE")
    invite.add_argument(
        "--ttl", default="24h", help="how long the code works (e.g. 30m, 24h, 7d; default 24h)"
    )
    invite.add_argument(
        "--json", action="store_true", help="print {device, code, expires_at} as JSON"
    )
    add_store_options(invite)
    invite.set_defaults(func=run_invite)

    lst = actions.add_parser("list", help="show enrolled and reporting devices")
    lst.add_argument("--json", action="store_true", help="print one JSON list on stdout")
    add_store_options(lst)
    lst.set_defaults(func=run_list)

    show = actions.add_parser(
        "show",
        help="show a device's report, heartbeat, transaction, rollouts and event timeline",
        description="Show what the store knows about DEVICE: its last report and heartbeat, "
        "its current or last update transaction, its state in each rollout (and why), and "
        "the timeline of its step events with each step's detail, newest first.",
    )
    show.add_argument("device", metavar="DEVICE")
    show.add_argument("--json", action="store_true", help="print one JSON document")
    add_store_options(show)
    show.set_defaults(func=run_show)

    revoke = actions.add_parser(
        "revoke",
        help="make a device's token stop working",
        description="Revoke DEVICE's token. The device cannot enroll again with the fleet "
        "secret; `engine devices enroll` readmits it.",
    )
    revoke.add_argument("device", metavar="DEVICE")
    add_store_options(revoke)
    revoke.set_defaults(func=run_revoke)

    requests = actions.add_parser(
        "requests",
        help="show enrollments of enrolled devices awaiting approval",
        description="Show the enrollment requests of devices that are already enrolled and "
        "asked again with the fleet secret only: pending ones first, with their source "
        "address and device key fingerprint.",
    )
    requests.add_argument("--json", action="store_true", help="print one JSON list on stdout")
    add_store_options(requests)
    requests.set_defaults(func=run_requests)

    for name, verb in (("approve", "approve"), ("reject", "reject")):
        decide = actions.add_parser(
            name,
            help=f"{verb} a device's pending enrollment request",
            description=f"{verb.capitalize()} DEVICE's pending enrollment request (the only "
            "one, or the one given with --request). Approved: the device's next enrollment "
            "attempt with that key gets a new token and its old token stops working. "
            "Rejected: that attempt is refused for good.",
        )
        decide.add_argument("device", metavar="DEVICE")
        decide.add_argument("--request", type=int, help="the request's number (engine devices "
                            "requests) when the device has several")  # fmt: skip
        add_store_options(decide)
        decide.set_defaults(func=run_decide, approve=name == "approve")


def _open(args: argparse.Namespace) -> Store:
    return Store.open(state_url(args.directory, args.state))


def _error(message: str) -> int:
    print(f"engine devices: {message}", file=sys.stderr)
    return EXIT_ERROR


def run_enroll(args: argparse.Namespace) -> int:
    """Register a device with a new token and print the token."""
    from engine.server.registry import enroll_device

    try:
        store = _open(args)
        with store, store.write() as conn:
            enrollment = enroll_device(
                conn, args.device, Platform(args.platform), datetime.now(UTC), operator=True
            )
    except EngineError as e:
        return _error(str(e))
    if args.json:
        print(json.dumps({"device": enrollment.device, "token": enrollment.token}))
    else:
        what = "enrolled"
        if enrollment.reenrolled:
            what = "enrolled again (its old token no longer works)"
        print(f"device {args.device} {what}; its token (shown once):", file=sys.stderr)
        print(enrollment.token)
    return EXIT_OK


def run_invite(args: argparse.Namespace) -> int:
    """Issue a single-use enrollment code for a device and print it."""
    from engine.server.invites import issue_invite

    try:
        ttl = parse_duration(args.ttl)
    except ValueError as e:
        return _error(f"--ttl: {e}")
    try:
        store = _open(args)
        with store, store.write() as conn:
            invite = issue_invite(conn, args.device, ttl, datetime.now(UTC))
    except EngineError as e:
        return _error(str(e))
    expires = invite.expires_at.isoformat(timespec="seconds")
    if args.json:
        print(json.dumps({"device": invite.device, "code": invite.code, "expires_at": expires}))
    else:
        print(f"invite for device {args.device}, single use, expires {expires}:", file=sys.stderr)
        print(invite.code)
    return EXIT_OK


def run_revoke(args: argparse.Namespace) -> int:
    """Revoke a device's token."""
    from engine.server.registry import revoke_device

    try:
        store = _open(args)
        with store, store.write() as conn:
            known = revoke_device(conn, args.device, datetime.now(UTC))
    except EngineError as e:
        return _error(str(e))
    if not known:
        return _error(f"device {args.device!r} never enrolled; nothing revoked")
    print(f"device {args.device} revoked")
    return EXIT_OK


def run_show(args: argparse.Namespace) -> int:
    """Print one device's state and its event timeline."""
    from rich.console import Console

    from engine.forensics_render import render_device
    from engine.service.forensics import read_device

    try:
        store = _open(args)
        with store:
            detail = read_device(store, args.device)
    except EngineError as e:
        return _error(str(e))
    if args.json:
        print(detail.model_dump_json(indent=2))
        return EXIT_OK
    Console(highlight=False).print(render_device(detail))
    return EXIT_OK


def run_requests(args: argparse.Namespace) -> int:
    """Print the enrollment requests awaiting (or given) a decision."""
    from engine.server.approvals import list_requests

    try:
        store = _open(args)
        with store, store.read() as conn:
            rows = list_requests(conn)
    except EngineError as e:
        return _error(str(e))
    if args.json:
        print(json.dumps([r.as_json() for r in rows]))
        return EXIT_OK
    if not rows:
        print("no enrollment requests")
        return EXIT_OK
    print(f"{'ID':>5} {'DEVICE':30} {'STATUS':9} {'KEY':16} {'SOURCE':16} LAST SEEN")
    for r in rows:
        seen = r.last_seen_at.isoformat(timespec="seconds")
        print(f"{r.id:>5} {r.device:30} {r.status:9} {r.key_hash[:16]:16} "
              f"{r.source or '-':16} {seen}")  # fmt: skip
    return EXIT_OK


def run_decide(args: argparse.Namespace) -> int:
    """Approve or reject a device's enrollment request."""
    from engine.server.approvals import decide_request

    try:
        store = _open(args)
        with store, store.write() as conn:
            found = decide_request(
                conn,
                args.device,
                approve=args.approve,
                now=datetime.now(UTC),
                by="engine devices",
                request_id=args.request,
            )
    except EngineError as e:
        return _error(str(e))
    what = "approved: it gets a new token" if args.approve else "rejected"
    print(f"enrollment request {found.id} of device {args.device} {what} when it asks again")
    return EXIT_OK


def run_list(args: argparse.Namespace) -> int:
    """Print every enrolled or reporting device."""
    from engine.server.registry import list_devices

    try:
        store = _open(args)
        with store, store.read() as conn:
            rows = list_devices(conn)
    except EngineError as e:
        return _error(str(e))
    now = datetime.now(UTC)
    if args.json:
        print(json.dumps([d.as_json(now, online_within=180.0) for d in rows]))
        return EXIT_OK
    if not rows:
        print("no devices")
        return EXIT_OK
    header = (
        f"{'DEVICE':30} {'PLATFORM':8} {'VERSION':10} {'RUNTIME':10} {'SELF-UPDATE':11} "
        f"{'ADOPTED':10} {'LAST CHECK-IN':26} STATE"
    )
    print(header)
    for d in rows:
        state = "revoked" if d.revoked_at else ("enrolled" if d.enrolled else "not enrolled")
        seen = d.last_seen.isoformat(timespec="seconds") if d.last_seen else "-"
        adopted = d.adopted() or "-"
        able = {True: "yes", False: "no", None: "-"}[d.runtime_self_update]
        print(
            f"{d.device:30} {d.platform or '-':8} {d.agent_version or '-':10} "
            f"{d.runtime_version or '-':10} {able:11} {adopted:10} {seen:26} {state}"
        )
    return EXIT_OK
