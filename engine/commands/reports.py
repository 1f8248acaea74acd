"""`engine reports import|list`: load device reports into the store, or show them."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from engine.commands._args import add_store_options, state_url
from engine.errors import EngineError
from states.report import Report

__all__ = ["parse_reports", "register"]

EXIT_OK = 0
EXIT_ERROR = 1

#: At most this many problems are printed for a bad file; the rest are counted.
MAX_PROBLEMS = 20

_REPORTS = TypeAdapter(list[Report])
_VERSION_FIELDS = ("agent_version", "known_good")


class ReportsFileError(EngineError):
    """A reports file that is not a valid JSON list of reports; ``problems`` says where."""

    def __init__(self, source: str, problems: list[str]) -> None:
        shown = problems[:MAX_PROBLEMS]
        if len(problems) > MAX_PROBLEMS:
            shown.append(f"... and {len(problems) - MAX_PROBLEMS} more problems")
        super().__init__("\n".join(f"{source}: {p}" for p in shown))
        self.source = source
        self.problems = problems


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `reports` subcommand with its `import` and `list` actions."""
    parser = subparsers.add_parser(
        "reports",
        help="import or list what devices last reported",
        description="Device reports are what the planner compares the desired state "
        "with. Devices send them to `engine serve`; `import` loads them from a file, "
        "e.g. exported from an older system, so a fleet can be planned before that.",
    )
    actions = parser.add_subparsers(dest="reports_action", metavar="ACTION", required=True)

    imp = actions.add_parser(
        "import",
        help="load a JSON list of reports into the store",
        description="Load a JSON list of {device, agent_version, platform, last_seen, ...} "
        "objects into the store. Nothing is written when any entry is invalid. A report "
        "older than the one stored for its device is skipped.",
    )
    imp.add_argument("file", metavar="FILE.json", help="the reports file, or - for stdin")
    add_store_options(imp)
    imp.set_defaults(func=run_import)

    lst = actions.add_parser("list", help="show the stored reports")
    lst.add_argument("--json", action="store_true", help="print one JSON list on stdout")
    add_store_options(lst)
    lst.set_defaults(func=run_list)


def _describe_problem(error: ErrorDetails) -> str:
    loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"]) or "(top)"
    kind = error["type"]
    found = error.get("input")
    field = error["loc"][-1] if error["loc"] else None
    if kind == "missing":
        return f"{loc}: missing; every report needs device and last_seen"
    if kind == "model_type":
        return f"{loc}: expected an object with device, last_seen, ...; found {found!r}"
    if kind == "enum":
        allowed = " | ".join(re.findall(r"'([^']*)'", error["ctx"]["expected"]))
        return f"{loc}: {found!r} is not one of {allowed}"
    if field in _VERSION_FIELDS and isinstance(found, int | float) and not isinstance(found, bool):
        return f'{loc}: {found!r} is a number, not a version; write it as a string ("{found}")'
    message = error["msg"].removeprefix("Value error, ")
    return f"{loc}: {message} (found {found!r})"


def parse_reports(data: bytes | str, source: str) -> list[Report]:
    """Validate a JSON list of reports; ``source`` names the file in messages.

    Raises ReportsFileError listing every problem by list index and field
    (e.g. ``reports.json: [3].platform: 'bsd' is not one of windows | linux |
    macos``), and for invalid JSON, a top level that is not a list, or a device
    listed twice.
    """
    try:
        raw: Any = json.loads(data)
    except json.JSONDecodeError as e:
        raise ReportsFileError(
            f"{source}:{e.lineno}:{e.colno}", [f"not valid JSON: {e.msg}"]
        ) from e
    except UnicodeDecodeError as e:
        raise ReportsFileError(source, [f"not UTF-8 text: {e.reason}"]) from e
    if not isinstance(raw, list):
        kind = "an object" if isinstance(raw, dict) else type(raw).__name__
        raise ReportsFileError(source, [f"expected a JSON list of reports, found {kind}"])
    try:
        reports = _REPORTS.validate_python(raw)
    except ValidationError as e:
        raise ReportsFileError(source, [_describe_problem(err) for err in e.errors()]) from e
    first: dict[str, int] = {}
    duplicates: list[str] = []
    for index, report in enumerate(reports):
        seen = first.setdefault(report.device, index)
        if seen != index:
            duplicates.append(
                f"[{index}].device: {report.device!r} is also at [{seen}]; list each device once"
            )
    if duplicates:
        raise ReportsFileError(source, duplicates)
    return reports


def _read(name: str) -> tuple[bytes, str]:
    if name == "-":
        return sys.stdin.buffer.read(), "<stdin>"
    path = Path(name)
    try:
        return path.read_bytes(), name
    except OSError as e:
        raise ReportsFileError(name, [f"cannot read: {e.strerror}"]) from e


def _fail(message: str) -> int:
    print(message, file=sys.stderr)
    return EXIT_ERROR


def run_import(args: argparse.Namespace) -> int:
    """Run `engine reports import`; 0 when imported, 1 when nothing was written."""
    from engine.store import Store, redact_url

    try:
        data, source = _read(args.file)
        reports = parse_reports(data, source)
        url = state_url(args.directory, args.state)
        with Store.open(url) as store:
            counts = store.import_reports(reports)
    except ReportsFileError as e:
        return _fail(f"engine reports import: nothing imported\n{e}")
    except EngineError as e:
        return _fail(f"engine reports import: {e}")
    noun = "report" if len(reports) == 1 else "reports"
    detail = f"{counts.new} new, {counts.updated} updated"
    if counts.older:
        detail += f", {counts.older} older than the stored report and skipped"
    print(f"imported {len(reports)} {noun} into {redact_url(url)} ({detail})")
    return EXIT_OK


def run_list(args: argparse.Namespace) -> int:
    """Run `engine reports list`: a table, or one JSON list with --json."""
    from engine.store import Store

    try:
        with Store.open(state_url(args.directory, args.state)) as store:
            reports = sorted(store.load_reports().values(), key=lambda r: r.device)
    except EngineError as e:
        return _fail(f"engine reports list: {e}")
    if args.json:
        sys.stdout.buffer.write(_REPORTS.dump_json(reports, indent=2) + b"\n")
        sys.stdout.flush()
        return EXIT_OK
    print(_table(reports))
    return EXIT_OK


def _table(reports: Sequence[Report]) -> str:
    header = ("DEVICE", "PLATFORM", "VERSION", "KNOWN GOOD", "LAST SEEN (UTC)", "LAST RESULT")
    rows = [header] + [
        (
            r.device,
            r.platform.value if r.platform else "-",
            str(r.agent_version) if r.agent_version else "-",
            str(r.known_good) if r.known_good else "-",
            r.last_seen.strftime("%Y-%m-%d %H:%M:%S"),
            r.last_result or "-",
        )
        for r in reports
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.append(f"{len(reports)} report{'s' if len(reports) != 1 else ''}")
    return "\n".join(lines)
