"""Load the operator repo: engine.yaml, inventory/, releases/, channels.yaml, runtime-releases/.

``load_operator_repo`` reads every file, validates it, checks the references
between files (group members, releases, pins, overlapping groups) and either
returns an ``OperatorRepo`` or raises one ``InventoryError`` listing every
problem found, each with file, line, column and key path.
"""

from __future__ import annotations

import gc
import hashlib
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from fleetbase.clock import utc_now
from fleetbase.gcpause import gc_paused
from fleetbase.version import Version
from inventory._channel_groups import resolve_channel_groups
from inventory._checks import check_after, check_references, conflict_problems, merge_files
from inventory._rollout_checks import (
    check_gate_groups,
    check_platforms,
    empty_group_warnings,
    expired_release_warnings,
)
from inventory.catalog import LoadedRelease, load_release_catalog
from inventory.channels import Channels, Resolution, load_channels
from inventory.config_templates import config_templates
from inventory.errors import InventoryError, Problem
from inventory.flags import check_flags
from inventory.membership import Assignment, assign_groups
from inventory.models import EngineSettings, Inventory, InventoryFile
from inventory.runtime_catalog import check_runtime_releases, runtime_release_sources
from inventory.sources import SourceFile, problems_from_validation_error

if TYPE_CHECKING:
    import jinja2

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
    #: sha256 of each input file's bytes by its POSIX path relative to root
    file_digests: dict[str, str] = field(default_factory=dict)
    #: things that load but look wrong (a group matching no device), file:line each
    warnings: tuple[Problem, ...] = ()
    #: the channels (channels.yaml) and the channel of each release
    channels: Channels = field(default_factory=Channels)
    #: how each group that follows a channel was resolved, by group name
    resolutions: dict[str, Resolution] = field(default_factory=dict)


def load_operator_repo(root: Path, *, now: datetime | None = None) -> OperatorRepo:
    """Load and validate the operator repo at ``root``.

    ``now`` (default: the clock) is the instant release manifests' expiry is
    judged at: a group following a channel never resolves to an expired one.

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
            repo = _load(root, now)
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


def _load(root: Path, now: datetime | None) -> OperatorRepo:
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

    devices, groups, origin = merge_files(files, problems)
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

    before = len(problems)
    channels, channels_source = load_channels(
        root, catalog.releases, problems, unloadable=catalog.failed
    )
    if channels_source is not None:
        sources.append(channels_source)
    now = utc_now() if now is None else now
    groups, resolutions = resolve_channel_groups(
        groups,
        origin,
        channels,
        catalog.releases,
        problems,
        channels_valid=len(problems) == before,
        now=now,
    )

    sources.extend(config_templates(root, catalog.releases, problems))
    inventory = Inventory.model_construct(devices=devices, groups=groups)
    # A file that failed to load must not cause follow-on errors ("not a device",
    # "no such release") about what it would have defined.
    check_references(
        inventory,
        origin,
        catalog.releases,
        problems,
        devices_complete=failed_files == 0,
        unloadable_releases=catalog.failed,
    )
    check_after(inventory, origin, problems, groups_complete=failed_files == 0)
    check_runtime_releases(inventory, origin, root, problems)
    sources.extend(runtime_release_sources(root))
    assignment, conflicts = assign_groups(inventory)
    problems.extend(conflict_problems(conflicts, origin))
    warnings: list[Problem] = []
    if failed_files == 0 and not problems:  # no follow-on errors of other mistakes
        check_gate_groups(inventory, origin, assignment, problems)
        check_platforms(inventory, origin, catalog.releases, assignment, problems)
        check_flags(inventory, origin, catalog.releases, assignment, problems)
        warnings = empty_group_warnings(inventory, origin, assignment)
        warnings += expired_release_warnings(inventory, origin, catalog.releases, now)
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
        file_digests={s.rel.as_posix(): hashlib.sha256(s.data).hexdigest() for s in sources},
        warnings=tuple(sorted(warnings, key=Problem.sort_key)),
        channels=channels,
        resolutions=resolutions,
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
        self._env: jinja2.Environment | None = None

    @property
    def env(self) -> jinja2.Environment:
        """The Jinja2 environment, made (and Jinja2 imported) on first use: most repos
        have no templates."""
        if self._env is not None:
            return self._env
        import jinja2
        from jinja2.sandbox import SandboxedEnvironment

        # Sandboxed: a template is text from a pull request, run wherever the repo is
        # validated (CI included); it may compute values, never reach Python objects.
        self._env = SandboxedEnvironment(
            loader=jinja2.FileSystemLoader(str(self.directory)),
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
            autoescape=False,
        )
        return self._env

    def render(self, source: SourceFile, problems: list[Problem]) -> bytes | None:
        import jinja2

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
