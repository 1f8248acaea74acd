"""Release manifests: one signed document binding a version to every file it installs.

Manifests are read both by the engine (operator-written, strict) and by the
agent runtime (served, possibly by a newer engine). ``ReleaseManifest`` is
strict; the runtime parses with ``ReleaseManifest.parse_served`` which ignores
unknown keys so an old runtime keeps working with a newer server.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import PurePosixPath, PureWindowsPath
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fleetbase.duration import Duration
from fleetbase.platform import Platform
from fleetbase.version import Version
from states.requires import Requirements

__all__ = [
    "ConfigFileSpec",
    "FileEntry",
    "FlagSpec",
    "FlagType",
    "HealthCheck",
    "HealthCheckKind",
    "PlatformRelease",
    "ReleaseManifest",
    "flag_type_problem",
    "path_key",
    "validate_relative_path",
]

_SHA256_RE = re.compile(r"[0-9a-f]{64}", re.ASCII)


#: Names Windows reserves for devices, in any case and with any extension ("nul.txt").
_WINDOWS_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"]
    + [f"{d}{n}" for d in ("COM", "LPT") for n in [*"123456789", "¹", "²", "³"]]
)
#: Characters Windows file systems refuse in a name (":" would also open an NTFS stream).
_WINDOWS_FORBIDDEN = frozenset('<>:"|?*')


def _component_problem(part: str) -> str | None:
    """What is wrong with one path component, said after "path 'x' ", or None."""
    if part in ("", ".", ".."):
        return "must not contain '..', '.' or empty components"
    if any(ord(c) < 32 for c in part):
        return "contains a control character"
    bad = sorted(set(part) & _WINDOWS_FORBIDDEN)
    if bad:
        what = "an NTFS stream name ':'" if bad == [":"] else f"{''.join(bad)!r}"
        return f"has component {part!r} with {what} (not allowed in Windows file names)"
    if part.endswith((".", " ")):
        return f"has component {part!r}, which ends with a dot or a space (Windows drops them)"
    stem = part.split(".", 1)[0].rstrip(" ").upper()
    if stem in _WINDOWS_RESERVED:
        return f"has component {part!r}, a reserved device name on Windows"
    return None


def path_key(path: str) -> str:
    """The form under which two paths name the same file on some platform: NFC-normalised
    and case-folded (macOS normalises Unicode, Windows and macOS ignore case)."""
    return unicodedata.normalize("NFC", path).casefold()


def validate_relative_path(path: str) -> str:
    """Return ``path`` if it stays inside the agent root; raise ValueError otherwise.

    Refuses absolute POSIX paths, Windows drive or UNC paths, backslashes,
    ``..``, ``.`` and empty components, control characters, and names some
    platform would read differently: Windows device names (``CON``, ``nul.txt``,
    ``COM1``...), ``name:stream``, characters Windows forbids, and trailing dots
    or spaces.
    """
    if not path or path.strip() != path:
        raise ValueError("path must be a non-empty relative path without surrounding spaces")
    if "\\" in path:
        raise ValueError(f"path {path!r} must use '/' as separator, not '\\'")
    if "\x00" in path:
        raise ValueError("path contains a NUL byte")
    if PurePosixPath(path).is_absolute() or PureWindowsPath(path).drive or path.startswith("/"):
        raise ValueError(f"path {path!r} must be relative to the agent root, not absolute")
    for part in path.split("/"):
        problem = _component_problem(part)
        if problem is not None:
            raise ValueError(f"path {path!r} {problem}")
    return path


def _octal_mode(value: Any) -> Any:
    """A mode written as octal text ('0755') as its number; refuses bits beyond 0777."""
    if isinstance(value, str):
        try:
            value = int(value, 8)
        except ValueError as e:
            raise ValueError(f"mode {value!r} is not octal (e.g. '0755')") from e
    if isinstance(value, int) and not isinstance(value, bool) and not 0 <= value <= 0o777:
        special = "setuid, setgid or sticky bits" if 0 <= value <= 0o7777 else "bits"
        raise ValueError(f"mode {value:o} has {special}: allowed are permission bits 0000 to 0777")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileEntry(_Strict):
    """One file of a release: where it goes, what it must hash to, where to get it."""

    path: str
    sha256: str
    size: int = Field(ge=0)
    mode: int = Field(default=0o644, description="POSIX permission bits, e.g. 0755 or '0755'")
    source: str = Field(description="path under the repo's artifacts/ or an http(s) URL")

    @field_validator("path")
    @classmethod
    def _path_inside_root(cls, path: str) -> str:
        return validate_relative_path(path)

    @field_validator("sha256")
    @classmethod
    def _sha256_hex(cls, value: str) -> str:
        if not _SHA256_RE.fullmatch(value):
            raise ValueError("sha256 must be 64 lowercase hexadecimal characters")
        return value

    @field_validator("mode", mode="before")
    @classmethod
    def _mode_octal(cls, value: Any) -> Any:
        return _octal_mode(value)

    @field_validator("source")
    @classmethod
    def _source_is_path_or_url(cls, source: str) -> str:
        if source.startswith(("http://", "https://")):
            return source
        return validate_relative_path(source)


class HealthCheckKind(StrEnum):
    """How the runtime proves the new version alive."""

    HEARTBEAT_FILE = "heartbeat_file"
    HTTP = "http"
    PROCESS = "process"
    SERVER = "server"
    NATS = "nats"  # the agent's heartbeat on the NATS bus (states.nats)


class HealthCheck(_Strict):
    """A check that the newly installed version runs: must pass within ``timeout``."""

    kind: HealthCheckKind
    timeout: Duration = timedelta(seconds=60)
    path: str | None = Field(
        default=None, description="heartbeat_file: file the agent writes, relative to agent root"
    )
    max_age: Duration = Field(
        default=timedelta(seconds=30),
        description="heartbeat_file, nats: how fresh the beat must be",
    )
    url: str | None = Field(default=None, description="http: a local URL answering 200")
    stable_for: Duration = Field(
        default=timedelta(seconds=5), description="process: how long it must stay up"
    )

    @model_validator(mode="after")
    def _fields_for_kind(self) -> HealthCheck:
        if self.kind is HealthCheckKind.HEARTBEAT_FILE and not self.path:
            raise ValueError("a heartbeat_file health check needs 'path'")
        if self.kind is HealthCheckKind.HTTP and not self.url:
            raise ValueError("an http health check needs 'url'")
        if self.path is not None:
            validate_relative_path(self.path)
        return self


class PlatformRelease(_Strict):
    """The files (and optionally how to run them) of a release on one platform."""

    files: Annotated[list[FileEntry], Field(min_length=1)]
    command: list[str] | None = Field(
        default=None,
        description="for the process service manager: argv to start the agent, "
        "relative to the agent root; '{python}' is the runtime's interpreter",
    )

    @field_validator("files")
    @classmethod
    def _unique_paths(cls, files: list[FileEntry]) -> list[FileEntry]:
        seen: dict[str, str] = {}
        for f in files:
            key = path_key(f.path)
            if key in seen:
                twin = seen[key]
                same = "" if twin == f.path else (
                    f" ({twin!r} is the same file on Windows or macOS: equal up to case or "
                    "Unicode normalisation)"
                )  # fmt: skip
                raise ValueError(f"file {f.path!r} is listed twice{same}")
            seen[key] = f.path
        return files

    @property
    def total_size(self) -> int:
        """Bytes of all files together."""
        return sum(f.size for f in self.files)


class ConfigFileSpec(_Strict):
    """A config file the release's agent reads: rendered per device from a template."""

    path: str = Field(description="where the file goes, relative to the agent's config directory")
    template: str = Field(description="Jinja2 template, relative to the operator repo")
    mode: int = Field(default=0o640, description="POSIX permission bits, e.g. 0640 or '0640'")
    secrets: list[str] = Field(
        default_factory=list,
        description="names the template reads from the secrets source ({{ secrets.NAME }})",
    )

    @field_validator("path", "template")
    @classmethod
    def _relative(cls, path: str) -> str:
        return validate_relative_path(path)

    @field_validator("path")
    @classmethod
    def _not_flags(cls, path: str) -> str:
        if path == "flags.json":
            raise ValueError("flags.json is written by the runtime from the flags")
        return path

    @field_validator("mode", mode="before")
    @classmethod
    def _mode_octal(cls, value: Any) -> Any:
        return _octal_mode(value)


class FlagType(StrEnum):
    """The type of a feature flag's value."""

    BOOL = "bool"
    INT = "int"
    FLOAT = "float"
    STRING = "string"


class FlagSpec(_Strict):
    """A feature flag the release's agent understands: its type, default, and first version."""

    type: FlagType
    default: bool | int | float | str
    since: Version | None = Field(
        default=None, description="the first agent version that knows the flag"
    )
    description: str | None = None

    @model_validator(mode="after")
    def _default_has_type(self) -> FlagSpec:
        problem = flag_type_problem(self.type, self.default)
        if problem is not None:
            raise ValueError(f"default {problem}")
        return self


def flag_type_problem(kind: FlagType, value: object) -> str | None:
    """Why ``value`` is not of flag type ``kind`` (said after "value "), or None."""
    ok = {
        FlagType.BOOL: isinstance(value, bool),
        FlagType.INT: isinstance(value, int) and not isinstance(value, bool),
        FlagType.FLOAT: isinstance(value, int | float) and not isinstance(value, bool),
        FlagType.STRING: isinstance(value, str),
    }[kind]
    if ok:
        return None
    names = {bool: "a bool", int: "an int", float: "a float", str: "a string"}
    found = names.get(type(value), f"a {type(value).__name__}")
    wanted = {"bool": "a bool", "int": "an int", "float": "a float", "string": "a string"}
    return f"{value!r} is {found}, the flag is {wanted[kind.value]}"


class ReleaseManifest(_Strict):
    """releases/<version>.yaml: version, serial, expiry, files per platform, health, rollback."""

    kind: Literal["release"] = "release"
    version: Version
    serial: int = Field(ge=1, description="monotonic across releases; devices refuse lower ones")
    expires: datetime = Field(description="devices refuse the manifest after this instant")
    platforms: dict[Platform, PlatformRelease]
    health_check: HealthCheck | None = None
    rollback_to: list[Version] = Field(
        default_factory=list,
        description="earlier releases this one authorises devices to go back to",
    )
    notes: str | None = None
    requires: Requirements | None = Field(
        default=None, description="what a device needs before it gets this release"
    )
    config: list[ConfigFileSpec] = Field(
        default_factory=list, description="config files rendered per device (engine side)"
    )
    flags: dict[str, FlagSpec] = Field(
        default_factory=dict, description="the feature flags this release's agent knows"
    )

    @field_validator("config")
    @classmethod
    def _config_paths_unique(cls, value: list[ConfigFileSpec]) -> list[ConfigFileSpec]:
        seen: set[str] = set()
        for spec in value:
            if path_key(spec.path) in seen:
                raise ValueError(f"config file {spec.path!r} is listed twice")
            seen.add(path_key(spec.path))
        return value

    @field_validator("expires")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("expires needs a time zone, e.g. 2027-01-01T00:00:00Z")
        return value

    @field_validator("platforms")
    @classmethod
    def _some_platform(
        cls, value: dict[Platform, PlatformRelease]
    ) -> dict[Platform, PlatformRelease]:
        if not value:
            raise ValueError("a release needs files for at least one platform")
        return value

    @classmethod
    def parse_served(cls, data: dict[str, Any]) -> ReleaseManifest:
        """Validate a manifest received from a server, ignoring keys newer engines add."""
        return _ServedManifest.model_validate(data).to_manifest()


class _ServedManifest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    version: Version
    serial: int
    expires: datetime
    platforms: dict[str, dict[str, Any]]
    health_check: dict[str, Any] | None = None
    rollback_to: list[Version] = Field(default_factory=list)

    def to_manifest(self) -> ReleaseManifest:
        known = {p.value for p in Platform}
        platforms: dict[Platform, PlatformRelease] = {}
        for name, body in self.platforms.items():
            if name not in known:
                continue
            files = [
                FileEntry.model_validate(
                    {k: v for k, v in f.items() if k in FileEntry.model_fields}
                )
                for f in body.get("files", [])
            ]
            platforms[Platform(name)] = PlatformRelease(files=files, command=body.get("command"))
        health = None
        if self.health_check is not None:
            health = HealthCheck.model_validate(
                {k: v for k, v in self.health_check.items() if k in HealthCheck.model_fields}
            )
        return ReleaseManifest(
            version=self.version,
            serial=self.serial,
            expires=self.expires,
            platforms=platforms,
            health_check=health,
            rollback_to=self.rollback_to,
        )
