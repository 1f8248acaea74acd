"""`engine validate`: load the operator repo and report every problem with its place."""

from __future__ import annotations

import argparse
import sys

from engine.commands._args import add_repo_option
from inventory.errors import InventoryError
from inventory.loader import load_operator_repo

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `validate` subcommand."""
    p = subparsers.add_parser(
        "validate",
        help="check the operator repo (inventory, releases, engine.yaml)",
        description="Load and validate the operator repo. Exit 0 with a summary when it is "
        "valid; exit 1 printing each problem as file:line:col: key.path: message.",
    )
    add_repo_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Validate the repo at ``args.directory``; return 0 when valid, 1 otherwise."""
    try:
        repo = load_operator_repo(args.directory)
    except InventoryError as e:
        for problem in e.problems:
            print(problem, file=sys.stderr)
        count = len(e.problems)
        print(f"{count} problem{'s' if count != 1 else ''} found", file=sys.stderr)
        return 1
    for warning in repo.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    inv = repo.inventory
    print(
        f"ok: {_count(len(inv.devices), 'device')}, {_count(len(inv.groups), 'group')}, "
        f"{_count(len(repo.releases), 'release')} from {_count(len(repo.files), 'file')}"
    )
    return 0


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
