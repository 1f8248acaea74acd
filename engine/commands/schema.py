"""`engine schema`: JSON Schema of the operator repo's YAML files, for editors."""

from __future__ import annotations

import argparse
import json

from inventory.schema import KINDS, schema_for

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `schema` subcommand."""
    p = subparsers.add_parser(
        "schema",
        help="print the JSON Schema of the YAML files (for editors)",
        description="Print the JSON Schema of inventory files (default), release manifests, "
        "engine.yaml or channels.yaml, e.g. for the YAML language server's yaml.schemas setting.",
    )
    p.add_argument(
        "--kind",
        choices=sorted(KINDS),
        default="inventory",
        help="which file's schema (default: inventory)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the schema of ``args.kind`` as JSON; return 0."""
    print(json.dumps(schema_for(args.kind), indent=2, sort_keys=False))
    return 0
