"""`engine bootstrap`: install the runtime over SSH on hosts that have none yet."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from engine.commands._args import add_store_options
from engine.errors import EngineError
from fleetbase.duration import parse_duration
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
        "checked against known_hosts), issue it a single-use invite code, upload the "
        "installer GET /install/<platform> serves and the runtime bundle, and run the "
        "installer offline. Devices whose report names a runtime are skipped. Exit 1 when "
        "any host failed. See docs/ssh.md.",
    )
    add_store_options(p)
    p.add_argument("--group", metavar="G", help="only devices of this group")
    p.add_argument("--device", action="append", metavar="D", help="only this device (repeatable)")
    p.add_argument("--forks", type=int, default=10, metavar="N", help="hosts at once (10)")
    p.add_argument("--accept-new", action="store_true", help="record unknown host keys")
    p.add_argument("--known-hosts", type=Path, metavar="FILE", help="known_hosts for every host")
    p.add_argument("--server", metavar="URL",
                   help="engine serve as devices reach it (default: server_url)")  # fmt: skip
    p.add_argument("--invite-ttl", default="1h", metavar="DURATION",
                   help="how long each device's invite code works (default 1h)")  # fmt: skip
    p.add_argument("--service", choices=["systemd", "launchd", "none"],
                   help="the runtime's OS service (default: what the host runs)")  # fmt: skip
    p.add_argument("--agent-service", choices=["systemd", "launchd", "process"],
                   help="how the runtime restarts the agent (default: the OS's)")  # fmt: skip
    p.add_argument("--prefix", metavar="DIR",
                   help="the runtime's venv on the host, config and state under it "
                   "({device} is replaced; default the platform's standard place)")  # fmt: skip
    p.add_argument("--script", type=Path, metavar="FILE",
                   help="run this installer instead of the one engine serve hands out "
                   "(e.g. a reviewed copy of GET /install/<platform>)")  # fmt: skip
    p.add_argument("--force", action="store_true", help="also hosts that report a runtime")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.set_defaults(func=run)


def _installer_args(args: argparse.Namespace, server: str) -> tuple[str, ...]:
    out = ["--server", server]
    for option, value in (("--service", args.service), ("--agent-service", args.agent_service),
                          ("--prefix", args.prefix)):  # fmt: skip
        if value is not None:
            out += [option, value]
    return tuple(out)


def run(args: argparse.Namespace) -> int:
    """Run `engine bootstrap`; 0 when every selected host succeeded."""
    from engine.install.render import installer_script, pinned_keys
    from engine.service.repo import load_repo, open_store
    from engine.ssh.bootstrap import BootstrapOptions, bootstrap_hosts, issue_codes, render_results
    from engine.ssh.targets import ssh_targets
    from fleetbase.platform import Platform
    from inventory.membership import groups_of

    root = args.directory.resolve()
    try:
        ttl = parse_duration(args.invite_ttl)
    except ValueError as e:
        print(f"engine bootstrap: --invite-ttl: {e}", file=sys.stderr)
        return 1
    try:
        repo = load_repo(root)
        inv = repo.inventory
        if args.group is not None and args.group not in inv.groups:
            raise EngineError(f"no group {args.group!r} in the inventory")
        for d in args.device or []:
            if d not in inv.devices:
                raise EngineError(f"no device {d!r} in the inventory")
        server = args.server or repo.settings.server_url
        if not server:
            raise EngineError(
                "devices enroll with engine serve: pass --server URL or set server_url in "
                "engine.yaml"
            )
        try:
            keys = pinned_keys(root, repo.settings.trusted_keys)
        except ValueError as e:
            raise EngineError(str(e)) from e
        if not keys:
            raise EngineError(
                "engine.yaml names no trusted_keys: no runtime bundle would be trusted; add "
                "the public files of the bundle and release signing keys there"
            )
        unix = (Platform.LINUX, Platform.MACOS)
        if args.script is not None:
            if not args.script.is_file():
                raise EngineError(f"{args.script}: no such installer script")
            scripts = dict.fromkeys(unix, args.script.read_text(encoding="utf-8"))
        else:
            scripts = {p: installer_script(server, keys, p) for p in unix}
        chosen = [
            d
            for d, dev in sorted(inv.devices.items())
            if dev.platform in unix
            and (args.group is None or args.group in groups_of(inv, d))
            and (not args.device or d in args.device)
        ]
        targets, _ = ssh_targets(repo, chosen, known_hosts=args.known_hosts)
        with open_store(repo, args.state) as store:
            if not args.force:
                reports = store.load_reports()
                targets = {
                    d: t
                    for d, t in targets.items()
                    if d not in reports or not reports[d].runtime_version
                }
            codes = issue_codes(store, sorted(targets), ttl)
        options = BootstrapOptions(
            script=scripts.__getitem__,
            bundles_dir=root / repo.settings.runtime_bundles,
            trusted_keys=keys,
            invite=codes.__getitem__,
            accept_new=args.accept_new,
            extra_args=_installer_args(args, server),
        )
    except InventoryError as e:
        print(f"engine bootstrap: the operator repo {root} has problems:", file=sys.stderr)
        print(e.render(), file=sys.stderr)
        return 1
    except EngineError as e:
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
