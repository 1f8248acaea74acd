"""`engine bootstrap`: install the runtime over SSH on hosts that have none yet."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import EngineError
from inventory.errors import InventoryError

if TYPE_CHECKING:
    from engine.ssh.bootstrap import HostResult

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `bootstrap` subcommand."""
    p = subparsers.add_parser(
        "bootstrap",
        help="install the runtime over SSH on Linux/macOS devices that have none yet",
        description="Connect to each selected device with inventory ssh settings (host keys "
        "checked against known_hosts), upload the bootstrap script and the runtime bundle, "
        "and run the script offline. Devices whose report names a runtime are skipped. "
        "Exit 1 when any host failed. See docs/ssh.md.",
    )
    p.add_argument("-C", dest="directory", type=Path, default=Path("."), metavar="DIR")
    p.add_argument("--group", metavar="G", help="only devices of this group")
    p.add_argument("--device", action="append", metavar="D", help="only this device (repeatable)")
    p.add_argument("--forks", type=int, default=10, metavar="N", help="hosts at once (10)")
    p.add_argument("--accept-new", action="store_true", help="record unknown host keys")
    p.add_argument("--known-hosts", type=Path, metavar="FILE", help="known_hosts for every host")
    p.add_argument("--script", type=Path, metavar="FILE", required=True,
                   help="the bootstrap script (as served at GET /install/<platform>)")  # fmt: skip
    p.add_argument("--force", action="store_true", help="also hosts that report a runtime")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.add_argument("--state", metavar="URL", help="store URL (default as for engine plan)")
    p.set_defaults(func=run)


def _invite(root: Path) -> Callable[[str], str]:
    """The enrollment code issuer for each device.

    Seam: until single-use invite codes (`engine devices invite`) are in the store,
    every device gets the fleet's enrollment secret.
    """
    from engine.server.credentials import (
        ENROLLMENT_SECRET_FILE,
        ENV_ENROLLMENT_SECRET,
        load_credential,
    )

    secret = load_credential(root, ENV_ENROLLMENT_SECRET, ENROLLMENT_SECRET_FILE, create=False)
    return lambda _device: secret.value


def run(args: argparse.Namespace) -> int:
    """Run `engine bootstrap`; 0 when every selected host succeeded."""
    from engine.server.errors import CredentialError
    from engine.ssh.bootstrap import BootstrapOptions, bootstrap_hosts, render_results
    from engine.ssh.targets import ssh_targets
    from engine.store import Store, resolve_state_url
    from fleetbase.platform import Platform
    from inventory.loader import load_operator_repo
    from inventory.membership import groups_of

    root = args.directory.resolve()
    try:
        repo = load_operator_repo(root)
        inv = repo.inventory
        if args.group is not None and args.group not in inv.groups:
            raise EngineError(f"no group {args.group!r} in the inventory")
        for d in args.device or []:
            if d not in inv.devices:
                raise EngineError(f"no device {d!r} in the inventory")
        chosen = [
            d
            for d, dev in sorted(inv.devices.items())
            if dev.platform in (Platform.LINUX, Platform.MACOS)
            and (args.group is None or args.group in groups_of(inv, d))
            and (not args.device or d in args.device)
        ]
        targets, _ = ssh_targets(repo, chosen, known_hosts=args.known_hosts)
        if not args.force:
            url = resolve_state_url(root, args.state, repo.settings.state)
            with Store.open(url) as store:
                reports = store.load_reports()
            targets = {
                d: t
                for d, t in targets.items()
                if d not in reports or not reports[d].runtime_version
            }
        if not args.script.is_file():
            raise EngineError(f"{args.script}: no such bootstrap script")
        options = BootstrapOptions(
            script=args.script,
            bundles_dir=root / ".engine" / "runtime-bundles",
            invite=_invite(root),
            accept_new=args.accept_new,
        )
    except InventoryError as e:
        print(f"engine bootstrap: the operator repo {root} has problems:", file=sys.stderr)
        print(e.render(), file=sys.stderr)
        return 1
    except (EngineError, CredentialError) as e:
        print(f"engine bootstrap: {e}", file=sys.stderr)
        return 1
    if not targets:
        print("engine bootstrap: no selected device has ssh settings and no runtime yet")
        return 0

    def line(r: HostResult) -> None:
        if not args.json and not r.ok:
            print(r.detail, file=sys.stderr, flush=True)

    results = bootstrap_hosts(targets.values(), options, forks=args.forks, on_result=line)
    if args.json:
        rows = [{"device": r.device, "host": r.host, "ok": r.ok, "status": r.status,
                 "detail": r.detail, "result": r.result} for r in results]  # fmt: skip
        print(json.dumps({"hosts": rows}, indent=2))
    else:
        sys.stdout.write(render_results(results))
    return 0 if all(r.ok for r in results) else 1
