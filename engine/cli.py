"""The `engine` command line: one subcommand module per verb under engine/commands/."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Protocol

__all__ = ["main"]

#: Subcommand modules, in the order `engine --help` lists them. Each module has
#: ``register(subparsers) -> None`` that adds its parser and sets ``func``.
COMMAND_MODULES: tuple[str, ...] = (
    "validate",
    "plan",
    "apply",
    "status",
    "rollout",
    "reports",
    "schema",
    "keys",
    "trust",
    "serve",
    "devices",
    "runtime",
    "bootstrap",
)


class _Registrar(Protocol):
    def __call__(self, subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None: ...


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fleet-rollout")
    except PackageNotFoundError:
        return "unknown (not installed)"


class _VersionAction(argparse.Action):
    # Looked up only when asked for: importlib.metadata costs ~20 ms at start-up.
    def __call__(self, parser: argparse.ArgumentParser, *_: object, **__: object) -> None:
        print(f"{parser.prog} {_version()}")  # on stdout, as argparse's own version action
        parser.exit()


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Build the argument parser with every subcommand registered, or only ``only``.

    ``engine --help`` and a mistyped command need them all; a command whose
    module has its name needs only that module (each imports what its verbs use).
    """
    parser = argparse.ArgumentParser(
        prog="engine",
        description="Plan and roll out agent releases across a device fleet.",
    )
    parser.add_argument(
        "--version", action=_VersionAction, nargs=0, help="show the version and exit"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    modules = (only,) if only in COMMAND_MODULES else COMMAND_MODULES
    for name in modules:
        module = importlib.import_module(f"engine.commands.{name}")
        register: _Registrar = module.register
        register(subparsers)
    if only not in subparsers.choices and modules != COMMAND_MODULES:
        return build_parser()  # a module registers other commands than its name (trust: keys)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the engine CLI; returns the process exit code."""
    from engine._extra import INSTALL_HINT, missing_engine_modules

    if missing := missing_engine_modules():
        print(
            f"engine: the engine is not installed here (missing {', '.join(missing)}): "
            f"{INSTALL_HINT}",
            file=sys.stderr,
        )
        return 1
    words = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(words[0] if words else None)
    args = parser.parse_args(words)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
