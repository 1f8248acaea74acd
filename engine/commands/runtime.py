"""`engine runtime bundle`: signed, offline-installable bundles of the device runtime."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engine.commands._args import add_repo_option
from engine.errors import EngineError
from inventory.errors import InventoryError

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``runtime`` (with ``bundle``) to the engine CLI."""
    runtime = subparsers.add_parser("runtime", help="the device runtime: offline bundles")
    actions = runtime.add_subparsers(dest="runtime_command", metavar="ACTION", required=True)
    p = actions.add_parser(
        "bundle",
        help="download the runtime and its dependencies per device target, signed",
        description="For each target <platform>-<arch>-py<X.Y> (platform linux, macos or "
        "windows; arch as the OS names it: linux x86_64|aarch64, macos x86_64|arm64, "
        "windows amd64|arm64), collect the runtime's wheel and its dependencies through "
        "pip into OUT/<target>/ with bundle.json (sha256 and size of every wheel) and "
        "bundle.json.sig (signed like releases: --key, else $ENGINE_SIGNING_KEY, else "
        "engine.yaml's signing_key). `engine serve` serves them to devices.",
    )
    add_repo_option(p)
    p.add_argument(
        "--target",
        action="append",
        metavar="TARGET",
        help="e.g. linux-x86_64-py3.11; repeat for several (default: this machine's)",
    )
    p.add_argument(
        "--find-links",
        action="append",
        type=Path,
        default=[],
        metavar="DIR",
        help="also look for wheels in DIR (pip --find-links); repeat for several",
    )
    p.add_argument("--no-index", action="store_true", help="use only --find-links (offline)")
    p.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="where the bundles go (default: engine.yaml's runtime_bundles, "
        "DIR/.engine/runtime-bundles)",
    )
    p.add_argument("--key", type=Path, metavar="KEYFILE", help="ed25519 private key (PEM)")
    p.add_argument(
        "--version",
        dest="runtime_version",
        metavar="VERSION",
        help="build the runtime's wheel as VERSION instead of pyproject.toml's (from a "
        "copy of the source tree; for runtime releases)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document, no progress")
    p.set_defaults(func=_bundle)

    r = actions.add_parser(
        "release",
        help="make a runtime release from the bundles: runtime-releases/VERSION/",
        description="Verify every bundle under FROM (default: engine.yaml's runtime_bundles) "
        "against engine.yaml's trusted_keys (public key files), check they carry one "
        "runtime version, and copy them to runtime-releases/<version>/ in the operator "
        "repo. Groups name it with `runtime: {release: VERSION}`; a release never changes "
        "once made.",
    )
    add_repo_option(r)
    r.add_argument("--from", dest="bundles", type=Path, metavar="DIR", help="the bundles")
    r.add_argument("--version", dest="expected", metavar="VERSION", help="refuse another version")
    r.add_argument("--json", action="store_true", help="print one JSON document")
    r.set_defaults(func=_release)


def _release(args: argparse.Namespace) -> int:
    from engine.install.render import pinned_keys
    from engine.runtime_releases import new_runtime_release
    from fleetbase.version import Version, VersionError
    from inventory.loader import load_engine_settings

    directory: Path = args.directory
    try:
        settings = load_engine_settings(directory)
        bundles = args.bundles if args.bundles is not None else directory / settings.runtime_bundles
        expected = Version(args.expected) if args.expected else None
        keys = pinned_keys(directory, settings.trusted_keys)
        made = new_runtime_release(directory.absolute(), bundles, keys, expected)
    except (EngineError, InventoryError, VersionError, ValueError, OSError) as e:
        print(f"engine runtime release: {e}", file=sys.stderr)
        return 1
    if args.json:
        doc = {"version": str(made.version), "directory": str(made.directory),
               "targets": list(made.targets)}  # fmt: skip
        print(json.dumps(doc, indent=2))
    else:
        print(f"runtime release {made.version}: {', '.join(made.targets)} -> {made.directory}")
    return 0


def _bundle(args: argparse.Namespace) -> int:
    from engine.bundles import BuildOptions, build_bundles, local_target, parse_target
    from engine.bundles.build import project_source
    from engine.release_key import SIGNING_KEY_ENV, signing_key_path
    from inventory.loader import load_engine_settings

    directory: Path = args.directory
    try:
        if not directory.is_dir():
            raise EngineError(f"{directory} is not a directory (give the operator repo with -C)")
        targets = [parse_target(t) for t in args.target] if args.target else [local_target()]
        settings = load_engine_settings(directory)
        key = signing_key_path(directory, args.key)
    except (EngineError, InventoryError) as e:
        print(f"engine runtime bundle: {e}", file=sys.stderr)
        return 1
    out = (args.out if args.out is not None else directory / settings.runtime_bundles).absolute()
    if key is None:
        print(
            "engine runtime bundle: warning: no signing key (--key, "
            f"${SIGNING_KEY_ENV} or engine.yaml's signing_key): the bundles are unsigned "
            "and devices that pin keys refuse them",
            file=sys.stderr,
        )
    show_progress = not args.json and sys.stdout.isatty()

    def progress(line: str) -> None:
        if show_progress:
            print(f"  {line}", flush=True)

    options = BuildOptions(
        out=out,
        find_links=args.find_links,
        no_index=args.no_index,
        signing_key=key,
        source=project_source(),
        version=args.runtime_version,
    )
    results = build_bundles(targets, options, progress)
    failed = [r for r in results if r.error is not None]
    if args.json:
        print(json.dumps({"out": str(out), "bundles": [r.as_json() for r in results]}, indent=2))
    for r in results:
        if r.error is not None:
            print(f"engine runtime bundle: {r.target}: {r.error}", file=sys.stderr)
        elif not args.json:
            signed = f"signed by key {r.key_id}" if r.key_id else "UNSIGNED"
            print(
                f"{r.target}: runtime {r.runtime_version}, {r.files} wheels, "
                f"{r.size / 1e6:.1f} MB, {signed} -> {r.directory}"
            )
    return 1 if failed else 0
