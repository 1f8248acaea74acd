"""Saved plans: write them atomically, read them back, and tell whether they are stale."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Protocol

import orjson
from pydantic import ValidationError

from engine.errors import EngineError
from states.plan import AGENT, FORMAT_VERSION, DevicePlan, Plan

__all__ = [
    "OMITTED_DEFAULTS",
    "PlanFileError",
    "changed_files",
    "check_plan_fresh",
    "plan_json",
    "read_plan",
    "write_plan",
    "write_plan_json",
]


class PlanFileError(EngineError):
    """A saved plan cannot be read: missing, not JSON, not a plan, or from a newer engine."""


class _RepoInputs(Protocol):
    @property
    def digest(self) -> str: ...
    @property
    def file_digests(self) -> dict[str, str]: ...


class _StoreUrl(Protocol):
    @property
    def display_url(self) -> str: ...


#: Device fields a plan leaves out while they hold their default (docs/plan.md, ADR 0025).
#: All are newer than the plan format, so every engine that reads the format (and pydantic,
#: through ``DevicePlan``'s defaults) takes a missing one as this value.
OMITTED_DEFAULTS: dict[str, object] = {
    "channel": None,
    "awaits_runtime": None,
    "component": AGENT,
    "config_digest": None,
    "config_diff": None,
}


def _device_entries(devices: list[DevicePlan]) -> list[dict[str, Any]]:
    """Each device plan as the plan JSON has it: ``model_dump(mode="json")`` without the
    ``OMITTED_DEFAULTS`` that hold their default.

    Built from the field values directly: each step list that many devices share is
    converted once, versions become their text here (not in a callback per value).
    """
    steps_json: dict[int, list[dict[str, Any]]] = {}
    entries: list[dict[str, Any]] = []
    append = entries.append
    for device in devices:
        fields = device.__dict__
        steps = fields["steps"]
        if steps:
            converted = steps_json.get(id(steps))
            if converted is None:
                converted = steps_json[id(steps)] = [s.model_dump(mode="json") for s in steps]
            steps = converted
        current = fields["current"]
        desired = fields["desired"]
        entry = {
            "device": fields["device"],
            "group": fields["group"],
            "platform": fields["platform"],
            "current": None if current is None else current.text,
            "desired": None if desired is None else desired.text,
            "action": fields["action"],
            "reason": fields["reason"],
            "wave": fields["wave"],
            "rollout": fields["rollout"],
            "steps": steps,
        }
        if fields["channel"] is not None:
            entry["channel"] = fields["channel"]
        if fields["awaits_runtime"] is not None:
            entry["awaits_runtime"] = fields["awaits_runtime"]
        if fields["component"] != AGENT:
            entry["component"] = fields["component"]
        if fields["config_digest"] is not None:
            entry["config_digest"] = fields["config_digest"]
        if fields["config_diff"] is not None:
            entry["config_diff"] = fields["config_diff"]
        append(entry)
    return entries


def plan_json(plan: Plan, *, indent: bool = False) -> bytes:
    """The plan as JSON bytes (UTF-8, one document, trailing newline).

    The document of ``plan.model_dump_json()`` except that device entries (``devices``
    and ``runtime_devices``) leave out the ``OMITTED_DEFAULTS`` that hold their
    default; ``read_plan`` reads it back to an equal plan. About twice as fast as
    pydantic's serializer on large fleets: devices are written by orjson from their
    field values.
    """
    data = plan.model_dump(mode="json", exclude={"devices", "runtime_devices"})
    data["runtime_devices"] = _device_entries(plan.runtime_devices)
    data["devices"] = _device_entries(plan.devices)
    option = orjson.OPT_APPEND_NEWLINE | (orjson.OPT_INDENT_2 if indent else 0)
    return orjson.dumps(data, option=option)


def write_plan(plan: Plan, path: Path) -> None:
    """Write the plan to ``path`` atomically: a temp file beside it, fsync, then rename.

    Raises PlanFileError when the directory is missing or not writable.
    """
    write_plan_json(plan_json(plan), path)


def write_plan_json(data: bytes, path: Path) -> None:
    """Write an already serialized plan (``plan_json``) to ``path`` atomically.

    Raises PlanFileError when the directory is missing or not writable.
    """
    directory = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as e:
        raise PlanFileError(f"cannot write the plan to {path}: {e.strerror or e}") from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise PlanFileError(f"cannot write the plan to {path}: {e.strerror or e}") from e


def read_plan(path: Path) -> Plan:
    """Read a plan saved by ``engine plan --out``.

    Raises PlanFileError naming the file when it is missing, not JSON, not a
    plan, or written in a newer plan format than this engine understands.
    """
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise PlanFileError(f"cannot read the plan {path}: {e.strerror or e}") from e
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise PlanFileError(f"{path}: not a JSON document ({e})") from e
    if not isinstance(data, dict) or "format_version" not in data:
        raise PlanFileError(f"{path}: not a plan written by `engine plan --out`")
    version = data["format_version"]
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise PlanFileError(
            f"{path}: plan format_version {version!r} is newer than this engine "
            f"understands ({FORMAT_VERSION}); upgrade the engine or re-run `engine plan`"
        )
    try:
        return Plan.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise PlanFileError(f"{path}: {where}: {first['msg']}") from e


def _short(digest: str) -> str:
    return digest[:12] if digest else "(none)"


def changed_files(then: dict[str, str], now: dict[str, str]) -> list[str]:
    """The input files that differ between two ``path -> sha256`` maps, one phrase each."""
    found: list[str] = []
    for path in sorted(then.keys() | now.keys()):
        before, after = then.get(path), now.get(path)
        if before == after:
            continue
        if before is None:
            found.append(f"{path} was added")
        elif after is None:
            found.append(f"{path} was removed")
        else:
            found.append(f"{path} changed")
    return found


def check_plan_fresh(plan: Plan, repo: _RepoInputs, store: _StoreUrl) -> list[str]:
    """Why ``plan`` no longer describes the desired state; empty when it still does.

    A saved plan is bound to the desired state: every inventory file, release
    manifest and engine.yaml (their digest, file by file) and the store it was
    computed against. Device reports that arrived since are drift, shown by
    ``engine apply`` (``engine.plan_drift``), never a reason to refuse. A
    different git commit with identical files is not stale.
    """
    reasons: list[str] = []
    if plan.inventory.digest != repo.digest:
        files = changed_files(plan.inventory.files, repo.file_digests)
        if plan.inventory.files and files:
            reasons.append("the operator repo changed since the plan was made: " + ", ".join(files))
        else:
            reasons.append(
                "the operator repo changed since the plan was made "
                f"(inventory digest {_short(plan.inventory.digest)} then, "
                f"{_short(repo.digest)} now)"
            )
    if plan.state.url and plan.state.url != store.display_url:
        reasons.append(
            f"the plan was computed from the store {plan.state.url}, not {store.display_url}"
        )
    return reasons
