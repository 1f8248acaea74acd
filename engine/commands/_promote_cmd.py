"""`engine release promote VERSION CHANNEL` (added to `engine release` by ``_release_cmds``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["add_promote_command"]


def add_promote_command(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``promote`` to the ``engine release`` actions."""
    p = actions.add_parser(
        "promote",
        help="put a release on a channel (edits channels.yaml; review and commit it)",
        description="Put release VERSION on CHANNEL in channels.yaml: one line changed in "
        "place, the rest of the file kept. Prints the diff and the groups following a channel "
        "whose release changes; it does not commit: review and commit the change, then "
        "`engine plan` / `engine apply`. Moving a release to a less stable channel (a "
        "demotion) needs --force.",
    )
    p.add_argument("version", metavar="VERSION")
    p.add_argument("channel", metavar="CHANNEL")
    p.add_argument("-C", dest="directory", type=Path, default=Path(), metavar="DIR")
    p.add_argument("--force", action="store_true", help="allow a demotion to a less stable channel")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=_promote)


def _promote(args: argparse.Namespace) -> int:
    from engine.service.promote import PromoteError, promote
    from fleetbase.clock import utc_text
    from fleetbase.version import Version, VersionError

    try:
        version = Version(args.version)
        done = promote(args.directory.resolve(), version, args.channel, force=args.force)
    except (VersionError, PromoteError, OSError) as e:
        print(f"engine release promote: {e}", file=sys.stderr)
        return 1
    if args.json:
        doc = {
            "version": str(done.version),
            "channel": done.channel,
            "previous": done.previous,
            "file": str(done.path),
            "changed": bool(done.diff),
            "diff": done.diff,
            "moves": [
                {"group": m.group, "channel": m.channel, "from": str(m.before), "to": str(m.after)}
                for m in done.moves
            ],
            "expired": None if done.expired is None else done.expired.isoformat(),
        }
        print(json.dumps(doc, indent=2))
        return 0
    if not done.diff:
        print(f"release {done.version} is already on {done.channel}: nothing to change")
        return 0
    was = f"from {done.previous} " if done.previous else ""
    print(f"release {done.version}: {was}to {done.channel} ({done.path.name})")
    print(done.diff, end="" if done.diff.endswith("\n") else "\n")
    if done.moves:
        print("groups following a channel that move:")
        for m in done.moves:
            print(f"  {m.group} (channel {m.channel}): {m.before} -> {m.after}")
    else:
        print("no group following a channel changes release")
    if done.expired is not None:
        print(
            f"note: the manifest of {done.version} expired at "
            f"{utc_text(done.expired)} and devices refuse it: groups "
            "following a channel skip it until it is re-signed with a later `expires`"
        )
    print(
        "Review and commit the change (promotion is a reviewed change like any other), e.g.\n"
        f"  git add {done.path.name} && git commit -m 'Promote {done.version} to {done.channel}'\n"
        "then `engine plan` shows the rollouts it starts."
    )
    return 0
