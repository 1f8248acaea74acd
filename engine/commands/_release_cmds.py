"""`engine release new`, `list` and `promote` (added to `engine release` by ``keys``)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from engine.commands._promote_cmd import add_promote_command
from engine.errors import EngineError
from inventory.errors import InventoryError

__all__ = ["add_release_commands"]


def add_release_commands(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``new``, ``list`` and ``promote`` to the ``engine release`` actions."""
    new_p = actions.add_parser(
        "new",
        help="make a release from an agent build: copy, hash, write the manifest, sign",
        description="Copy DIR into artifacts/VERSION/, compute sha256, size and mode of every "
        "file, take the next serial and write releases/VERSION.yaml (with comments); sign it "
        "when a key is configured. The health check, the command and rollback_to default to "
        "the newest earlier release's.",
    )
    new_p.add_argument("version", metavar="VERSION")
    new_p.add_argument("--from", dest="build", type=Path, required=True, metavar="DIR")
    new_p.add_argument("-C", dest="directory", type=Path, default=Path(), metavar="DIR")
    new_p.add_argument(
        "--platform",
        action="append",
        choices=("linux", "windows", "macos"),
        help="a platform the build is for; repeat (default: all three)",
    )
    new_p.add_argument(
        "--health",
        metavar="KIND[:ARG]",
        help="heartbeat_file:PATH, http:URL, process, server or nats (default: the previous "
        "release's)",
    )
    new_p.add_argument("--health-timeout", metavar="DURATION", help="e.g. 30s (default 60s)")
    new_p.add_argument(
        "--command",
        metavar="ARGV",
        help="how the process service manager starts the agent, e.g. \"'{python}' agent.py\"",
    )
    new_p.add_argument(
        "--expires", default="365d", metavar="DURATION", help="from now (default 365d)"
    )
    new_p.add_argument(
        "--rollback-to",
        action="append",
        metavar="VERSION",
        help="a release devices may go back to; repeat (default: the previous release)",
    )
    new_p.add_argument("--notes", help="a line about the release")
    new_p.add_argument(
        "--channel",
        metavar="CHANNEL",
        help="put the release on this channel in channels.yaml (as `engine release promote`)",
    )
    new_p.add_argument("--key", type=Path, metavar="KEYFILE", help="sign with this key")
    new_p.add_argument("--json", action="store_true", help="print one JSON document")
    new_p.set_defaults(func=_new)

    list_p = actions.add_parser(
        "list", help="releases, serials, signatures and the groups using each"
    )
    list_p.add_argument("-C", dest="directory", type=Path, default=Path(), metavar="DIR")
    list_p.add_argument("--json", action="store_true", help="print one JSON document")
    list_p.set_defaults(func=_list)
    add_promote_command(actions)


def _refuse(action: str, message: object) -> int:
    print(f"engine release {action}: {message}", file=sys.stderr)
    return 1


def _new(args: argparse.Namespace) -> int:
    from engine.commands._progress import spinner
    from engine.service.release import ReleaseError, new_release, parse_health
    from fleetbase.clock import utc_now
    from fleetbase.duration import parse_duration
    from fleetbase.platform import Platform
    from fleetbase.version import Version, VersionError

    try:
        version = Version(args.version)
        rollback = [Version(v) for v in args.rollback_to] if args.rollback_to else None
    except VersionError as e:
        return _refuse("new", e)
    try:
        expires = parse_duration(args.expires)
        timeout = parse_duration(args.health_timeout) if args.health_timeout else None
    except ValueError as e:
        return _refuse("new", e)
    from engine.service.promote import PromoteError, check_channel, promote

    try:
        if args.channel is not None:
            check_channel(args.directory.resolve(), args.channel)
    except PromoteError as e:
        return _refuse("new", e)
    try:
        health = parse_health(args.health, timeout) if args.health else None
        with spinner(f"hashing and copying {args.build} …", enabled=not args.json):
            made = new_release(
                args.directory.resolve(), version, args.build, now=utc_now(),
                platforms=[Platform(p) for p in args.platform or ()], health=health,
                command=shlex.split(args.command) if args.command else None,
                expires_in=expires, rollback_to=rollback, notes=args.notes, key=args.key,
            )  # fmt: skip
    except (ReleaseError, EngineError, OSError) as e:
        return _refuse("new", e)
    channel_error: str | None = None
    if args.channel is not None:
        try:
            promote(args.directory.resolve(), made.version, args.channel)
        except PromoteError as e:
            channel_error = f"release {made.version} was made but not put on {args.channel}: {e}"
    if args.json:
        doc = {
            "version": str(made.version),
            "serial": made.serial,
            "manifest": str(made.manifest),
            "artifacts": str(made.artifacts),
            "files": made.files,
            "size": made.size,
            "platforms": [p.value for p in made.platforms],
            "rollback_to": [str(v) for v in made.rollback_to],
            "signature": str(made.signature) if made.signature else None,
            "key_ids": list(made.key_ids),
            "channel": args.channel if channel_error is None else None,
        }
        print(json.dumps(doc, indent=2))
        return 0 if channel_error is None else _refuse("new", channel_error)
    platforms = ", ".join(p.value for p in made.platforms)
    print(
        f"release {made.version} (serial {made.serial}): {made.files} files, {made.size} bytes, "
        f"for {platforms}"
    )
    print(f"  manifest  {made.manifest}")
    print(f"  artifacts {made.artifacts}")
    if made.signature is not None:
        print(f"  signed    {made.signature} (key id {', '.join(made.key_ids)})")
    else:
        print(
            f"  unsigned: no signing key configured; sign with "
            f"`engine release sign {made.manifest}` before `engine apply`"
        )
    if channel_error is not None:
        return _refuse("new", channel_error)
    if args.channel is not None:
        print(f"  channel   {args.channel} (channels.yaml: review and commit it with the release)")
    return 0


def _list(args: argparse.Namespace) -> int:
    from engine.service.release import list_releases
    from engine.service.repo import load_repo

    try:
        repo = load_repo(args.directory.resolve())
    except InventoryError as e:
        return _refuse("list", f"the operator repo has problems:\n{e.render()}")
    except EngineError as e:
        return _refuse("list", e)
    rows = list_releases(repo)
    if args.json:
        doc = [
            {
                "version": r.version,
                "serial": r.serial,
                "expires": r.expires.isoformat(),
                "platforms": r.platforms,
                "files": r.files,
                "signatures": r.signatures,
                "groups": r.groups,
                "pinned": r.pinned,
                "channel": r.channel,
            }
            for r in rows
        ]
        print(json.dumps({"releases": doc}, indent=2))
        return 0
    if not rows:
        print("no releases under releases/: make one with `engine release new VERSION --from DIR`")
        return 0
    header = ("VERSION", "CHANNEL", "SERIAL", "EXPIRES", "PLATFORMS", "FILES", "SIGNED", "USED BY")
    table = [header]
    for r in rows:
        used = ", ".join(r.groups)
        if r.pinned:
            used += (", " if used else "") + f"{r.pinned} pinned"
        signed = f"yes ({r.signatures})" if r.signatures else "NO"
        table.append(
            (
                r.version,
                r.channel or "-",
                str(r.serial),
                r.expires.strftime("%Y-%m-%d"),
                ",".join(r.platforms),
                str(r.files),
                signed,
                used or "-",
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0
