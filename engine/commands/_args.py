"""Options shared by the engine's subcommands: the operator repo and the store."""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.errors import EngineError

__all__ = ["add_repo_option", "add_state_option", "add_store_options", "state_url"]


def add_repo_option(p: argparse.ArgumentParser, *, default: Path | None = Path(".")) -> None:
    """Add ``-C DIR`` (the operator repo) as ``args.directory``."""
    p.add_argument(
        "-C",
        dest="directory",
        type=Path,
        default=default,
        metavar="DIR",
        help="operator repo (default: current directory)",
    )


def add_state_option(p: argparse.ArgumentParser) -> None:
    """Add ``--state URL`` (the store) as ``args.state``."""
    p.add_argument(
        "--state",
        metavar="URL",
        help="store URL (default: $ENGINE_STATE_URL, engine.yaml's state, DIR/.engine/state.db)",
    )


def add_store_options(p: argparse.ArgumentParser) -> None:
    """-C DIR and --state URL, as every store command has them."""
    add_repo_option(p)
    add_state_option(p)


def state_url(directory: Path, state: str | None) -> str:
    """The store URL for -C DIR and --state (reads only engine.yaml's state key).

    Raises EngineError when DIR is not a directory.
    """
    from engine.store import resolve_state_url, settings_state

    if not directory.is_dir():
        raise EngineError(f"{directory} is not a directory (give the operator repo with -C DIR)")
    root = directory.resolve()
    return resolve_state_url(root, state, settings_state(root))
