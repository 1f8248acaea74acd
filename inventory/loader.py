"""Load the operator repo: engine.yaml, inventory/*.yaml(.j2), releases/*.yaml.

``load_operator_repo`` reads every file, validates it, checks the references
between files (group members, releases, pins, overlapping groups) and either
returns an ``OperatorRepo`` or raises one ``InventoryError`` listing every
problem found, each with file, line, column and key path.
"""

from __future__ import annotations

import gc
import hashlib
import traceback
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fleetbase.gcpause import gc_paused
from fleetbase.version import Version
from inventory.catalog import LoadedRelease, load_release_catalog
from inventory.errors import InventoryError, Problem
from inventory.membership import Assignment, Conflict, assign_groups
from inventory.models import Device, EngineSettings, Group, Inventory
from inventory.sources import SourceFile, problems_from_validation_error, suggest

if TYPE_CHECKING:
    pass

__all__ = [
    "InventoryFile",
    "LoadedRelease",
    "OperatorRepo",
    "load_engine_settings",
    "load_operator_repo",
    "repo_digest",
]

ENGINE_FILE = "engine.yaml"
INVENTORY_DIR = "inventory"


class InventoryFile(BaseModel):
    """One file under inventory/: some devices and/or groups (merged with the others)."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="Fleet inventory file")

    devices: dict[str, Device] = Field(
        default_factory=dict, description="devices by id; an id may appear in one file only"
    )
    groups: dict[str, Group] = Field(
        default_factory=dict, description="groups by name; a name may appear in one file only"
    )


@dataclass(frozen=True)
class OperatorRepo:
    """Everything the engine needs from the operator repo, validated."""

    root: Path
    settings: EngineSettings
    inventory: Inventory
    releases: dict[Version, LoadedRelease]
    assignment: Assignment
    digest: str  # sha256 over every input file's relative path and bytes
    files: tuple[Path, ...]  # input files, relative to root


def load_operator_repo(root: Path) -> OperatorRepo:
    """Load and validate the operator repo at ``root``.

    Raises InventoryError listing every problem found (not only the first).
    The garbage collector is paused while loading and the result is frozen
    (``gc.freeze``) so later collections skip it; objects that die by reference
    count are still freed.
    """
    root = Path(root).absolute()
    if not root.is_dir():
        raise InventoryError([Problem(root, None, None, "", "is not a directory")])
    problems: list[Problem] | None = None
    with gc_paused():
        try:
            repo = _load(root)
        except InventoryError as e:
            # Raise afresh below, once the frames holding the parsed and composed
            # documents are gone: freeing them by reference count while the
            # collector is paused beats a full collection over millions of nodes.
            problems = e.problems
    if problems is not None:
        raise InventoryError(problems)
    # What was just loaded lives as long as the process needs it: keep later
    # collections from walking it again and again.
    gc.freeze()
    return repo


def _load(root: Path) -> OperatorRepo:
    problems: list[Problem] = []
    sources: list[SourceFile] = []

    settings = EngineSettings()
    engine_path = root / ENGINE_FILE
    engine_source: SourceFile | None = None
    if engine_path.is_file():
        engine_source = SourceFile.read(engine_path, root)
        sources.append(engine_source)
        settings = _load_settings(engine_source, problems) or settings

    inventory_files = _inventory_paths(root, problems)
    renderer = _Renderer(root / INVENTORY_DIR)
    files: list[tuple[SourceFile, InventoryFile]] = []
    failed_files = 0
    for path in inventory_files:
        source = SourceFile.read(path, root)
        sources.append(source)
        if path.name.endswith(".j2"):
            rendered = renderer.render(source, problems)
            if rendered is None:
                failed_files += 1
                continue
            source.text = rendered
        parsed = _validate_inventory_file(source, problems)
        if parsed is None:
            failed_files += 1
        else:
            files.append((source, parsed))
    # Helper templates (macros, includes) change what templates render to.
    sources.extend(
        SourceFile.read(p, root)
        for p in _template_helpers(root / INVENTORY_DIR)
        if p not in inventory_files
    )

    devices, groups, origin = _merge(files, problems)
    catalog = load_release_catalog(root)
    problems.extend(catalog.problems)
    sources.extend(catalog.sources)
    wanted = settings.field_release
    if (
        engine_source is not None
        and wanted is not None
        and wanted not in catalog.releases
        and str(wanted) not in catalog.failed
    ):
        known = ", ".join(str(v) for v in sorted(catalog.releases)) or "none"
        problems.append(
            engine_source.problem(
                ("field_release",),
                f"field_release {wanted} is not in releases/ (known: {known})",
                at_value=True,
            )
        )

    inventory = Inventory.model_construct(devices=devices, groups=groups)
    # A file that failed to load must not cause follow-on errors ("not a device",
    # "no such release") about what it would have defined.
    _check_references(
        inventory,
        origin,
        catalog.releases,
        problems,
        devices_complete=failed_files == 0,
        unloadable_releases=catalog.failed,
    )
    _check_after(inventory, origin, problems, groups_complete=failed_files == 0)
    assignment, conflicts = assign_groups(inventory)
    problems.extend(_conflict_problems(conflicts, origin))
    if problems:
        raise InventoryError(problems)
    return OperatorRepo(
        root=root,
        settings=settings,
        inventory=inventory,
        releases=catalog.releases,
        assignment=assignment,
        digest=_digest((s.rel.as_posix(), s.data) for s in sources),
        files=tuple(sorted((s.rel for s in sources), key=lambda p: p.as_posix())),
    )


def repo_digest(root: Path, paths: Iterable[Path]) -> str:
    """sha256 over each file's path relative to ``root`` (POSIX form) and bytes, sorted."""
    return _digest((p.relative_to(root).as_posix(), p.read_bytes()) for p in paths)


def _digest(entries: Iterable[tuple[str, bytes]]) -> str:
    digest = hashlib.sha256()
    for rel, data in sorted(entries):
        digest.update(rel.encode())
        digest.update(b"\0")
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


def load_engine_settings(root: Path) -> EngineSettings:
    """``ROOT/engine.yaml`` alone (defaults when absent), for commands that need no inventory.

    Raises InventoryError naming file, line and key.
    """
    path = Path(root) / ENGINE_FILE
    if not path.is_file():
        return EngineSettings()
    problems: list[Problem] = []
    settings = _load_settings(SourceFile.read(path, Path(root)), problems)
    if problems:
        raise InventoryError(problems)
    return settings or EngineSettings()


def _load_settings(source: SourceFile, problems: list[Problem]) -> EngineSettings | None:
    data, syntax = source.parse()
    if syntax:
        problems.extend(syntax)
        return None
    if data is None:
        return None
    if not isinstance(data, dict):
        problems.append(source.problem((), f"expected a mapping of settings, found {_kind(data)}"))
        return None
    try:
        return EngineSettings.model_validate(data)
    except ValidationError as e:
        problems.extend(problems_from_validation_error(source, e, data, EngineSettings))
        return None


def _inventory_paths(root: Path, problems: list[Problem]) -> list[Path]:
    directory = root / INVENTORY_DIR
    if not directory.is_dir():
        problems.append(
            Problem(
                Path(INVENTORY_DIR),
                None,
                None,
                "",
                "missing: the operator repo needs an inventory/ directory "
                "with devices and groups in *.yaml or *.yaml.j2 files",
            )
        )
        return []
    paths = sorted(
        p
        for p in directory.iterdir()
        if p.is_file()
        and (p.name.endswith(".yaml") or p.name.endswith(".yaml.j2"))
        and not p.name.startswith(".")
    )
    if not paths:
        problems.append(
            Problem(
                Path(INVENTORY_DIR),
                None,
                None,
                "",
                "holds no *.yaml or *.yaml.j2 files: declare devices and groups there",
            )
        )
    return paths


def _template_helpers(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(
        p
        for p in directory.rglob("*")
        if p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(directory).parts)
        and (p.parent != directory or not p.name.endswith((".yaml", ".yaml.j2")))
    )


class _Renderer:
    """Renders inventory/*.yaml.j2 with Jinja2: undefined names are errors."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(directory)),
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
            autoescape=False,
        )

    def render(self, source: SourceFile, problems: list[Problem]) -> bytes | None:
        name = source.path.relative_to(self.directory).as_posix()
        try:
            return self.env.get_template(name).render().encode()
        except jinja2.TemplateSyntaxError as e:
            where = source.rel
            if e.filename and Path(e.filename) != source.path:
                where = _relative(Path(e.filename), source.path.parent.parent)
            problems.append(Problem(where, e.lineno, None, "", f"Jinja2: {e.message}"))
        except jinja2.TemplateError as e:
            line = _template_line(e, source.path)
            problems.append(Problem(source.rel, line, None, "", f"Jinja2: {e}"))
        except Exception as e:  # errors raised by template code, e.g. a division by zero
            line = _template_line(e, source.path)
            problems.append(Problem(source.rel, line, None, "", f"Jinja2: {type(e).__name__}: {e}"))
        return None


def _template_line(error: BaseException, path: Path) -> int | None:
    line = None
    for frame in traceback.extract_tb(error.__traceback__):
        if Path(frame.filename) == path:
            line = frame.lineno
    return line


def _relative(path: Path, root: Path) -> Path:
    try:
        return path.relative_to(root)
    except ValueError:
        return path


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"the text {value!r}"
    return type(value).__name__


def _validate_inventory_file(source: SourceFile, problems: list[Problem]) -> InventoryFile | None:
    data, syntax = source.parse()
    if syntax:
        problems.extend(syntax)
        return None
    if data is None:
        return InventoryFile()
    if not isinstance(data, dict):
        problems.append(
            source.problem(
                (), f"expected a mapping with 'devices' and/or 'groups', found {_kind(data)}"
            )
        )
        return None
    for key in ("devices", "groups"):
        if key in data and data[key] is None:
            data[key] = {}  # `devices:` with nothing under it is an empty section
    try:
        return InventoryFile.model_validate(data)
    except ValidationError as e:
        problems.extend(problems_from_validation_error(source, e, data, InventoryFile))
        return None


@dataclass
class _Origin:
    """Which file defined each device and group (for positions in later checks)."""

    device: dict[str, SourceFile]
    group: dict[str, SourceFile]


def _merge(
    files: list[tuple[SourceFile, InventoryFile]], problems: list[Problem]
) -> tuple[dict[str, Device], dict[str, Group], _Origin]:
    devices: dict[str, Device] = {}
    groups: dict[str, Group] = {}
    origin = _Origin({}, {})
    for source, parsed in files:
        clash = parsed.devices.keys() & devices.keys() if devices else set()
        for device_id in sorted(clash):
            first = origin.device[device_id]
            problems.append(
                source.problem(
                    ("devices", device_id),
                    f"device {device_id!r} is defined twice: "
                    f"also at {first.where(('devices', device_id))}",
                )
            )
        fresh = (
            {k: v for k, v in parsed.devices.items() if k not in clash}  # keep the first
            if clash
            else parsed.devices
        )
        devices.update(fresh)
        origin.device.update(dict.fromkeys(fresh, source))
        for name, group in parsed.groups.items():
            if name in groups:
                first = origin.group[name]
                problems.append(
                    source.problem(
                        ("groups", name),
                        f"group {name!r} is defined twice: also at {first.where(('groups', name))}",
                    )
                )
                continue
            groups[name] = group
            origin.group[name] = source
    return devices, groups, origin


def _check_references(
    inventory: Inventory,
    origin: _Origin,
    releases: dict[Version, LoadedRelease],
    problems: list[Problem],
    *,
    devices_complete: bool,
    unloadable_releases: set[str],
) -> None:
    known = ", ".join(str(v) for v in sorted(releases)) or "none (releases/ is empty)"
    for name, group in inventory.groups.items():
        source = origin.group[name]
        for i, member in enumerate(group.members):
            if devices_complete and member not in inventory.devices:
                problems.append(
                    source.problem(
                        ("groups", name, "members", i),
                        f"{member!r} is not a device" + _suggest_device(member, inventory.devices),
                        at_value=True,
                    )
                )
        if (
            group.agent is not None
            and group.agent.release not in releases
            and str(group.agent.release) not in unloadable_releases
        ):
            problems.append(
                source.problem(
                    ("groups", name, "agent", "release"),
                    f"release {group.agent.release} is not in releases/ (known: {known})",
                    at_value=True,
                )
            )
    for device_id, device in inventory.devices.items():
        if (
            device.pin is not None
            and device.pin not in releases
            and str(device.pin) not in unloadable_releases
        ):
            problems.append(
                origin.device[device_id].problem(
                    ("devices", device_id, "pin"),
                    f"pin {device.pin} names no release in releases/ (known: {known})",
                    at_value=True,
                )
            )


def _check_after(
    inventory: Inventory, origin: _Origin, problems: list[Problem], *, groups_complete: bool
) -> None:
    """``rollout.after``: every name a group with a release, not the group itself, no cycle."""
    groups = inventory.groups
    edges: dict[str, list[str]] = {}
    for name, group in groups.items():
        after = group.rollout.after
        if not after:
            continue
        source = origin.group[name]
        valid: list[str] = []
        for i, other in enumerate(after):
            path = ("groups", name, "rollout", "after", i)
            if other == name:
                problems.append(
                    source.problem(
                        path, f"group {name!r} cannot wait for its own rollout", at_value=True
                    )
                )
            elif other not in groups:
                if groups_complete:
                    problems.append(
                        source.problem(
                            path,
                            f"{other!r} is not a group" + suggest(other, sorted(groups)),
                            at_value=True,
                        )
                    )
            elif groups[other].agent is None:
                problems.append(
                    source.problem(
                        path,
                        f"group {other!r} has no agent release, nothing to wait for",
                        at_value=True,
                    )
                )
                valid.append(other)
            else:
                valid.append(other)
        edges[name] = valid
    for cycle in _after_cycles(edges):
        start, following = cycle[0], cycle[1]
        index = groups[start].rollout.after.index(following)
        problems.append(
            origin.group[start].problem(
                ("groups", start, "rollout", "after", index),
                f"groups wait for each other in a cycle: {' -> '.join(cycle)}; "
                "none of their rollouts would ever start",
                at_value=True,
            )
        )


def _after_cycles(edges: dict[str, list[str]]) -> list[list[str]]:
    """One cycle per set of groups that wait for each other, from its first name back to it."""
    reach: dict[str, set[str]] = {}
    for start, targets in edges.items():
        seen: set[str] = set()
        todo = list(targets)
        while todo:
            node = todo.pop()
            if node not in seen:
                seen.add(node)
                todo.extend(edges.get(node, ()))
        reach[start] = seen
    cycles: list[list[str]] = []
    done: set[str] = set()
    for start in sorted(edges):
        if start in done or start not in reach[start]:
            continue
        component = {n for n in reach[start] if start in reach.get(n, set())}
        done |= component
        # the shortest way from start back to itself inside its component
        back: dict[str, str] = {}
        queue = deque([start])
        while queue and start not in back:
            node = queue.popleft()
            for nxt in sorted(edges.get(node, ())):
                if nxt in component and nxt not in back:
                    back[nxt] = node
                    queue.append(nxt)
        chain = [back[start]]  # predecessors of start, walking backwards
        while chain[-1] != start:
            chain.append(back[chain[-1]])
        cycles.append([start, *reversed(chain[:-1]), start])
    return cycles


def _suggest_device(name: str, devices: dict[str, Device]) -> str:
    import difflib

    if len(devices) > 20000:
        return ""  # difflib over a huge fleet costs more than the hint is worth
    close = difflib.get_close_matches(name, list(devices), n=1, cutoff=0.8)
    return f"; did you mean {close[0]!r}?" if close else ""


def _conflict_problems(conflicts: list[Conflict], origin: _Origin) -> list[Problem]:
    out = []
    for conflict in conflicts:
        name_a, name_b = conflict.groups
        source_a = origin.group[name_a]
        source_b = origin.group[name_b]
        first = conflict.devices[0]
        more = len(conflict.devices) - 1
        also = f" (and {more} more device{'s' if more != 1 else ''})" if more else ""
        out.append(
            source_a.problem(
                ("groups", name_a),
                f"groups {name_a!r} ({source_a.where(('groups', name_a))}) and {name_b!r} "
                f"({source_b.where(('groups', name_b))}) both have priority "
                f"{conflict.priority} and both match device {first!r}{also}, but disagree "
                f"on {', '.join(conflict.differences)}: give one a higher priority",
            )
        )
    return out
