"""The device config (YAML): who this device is, where its agent lives, whom it trusts.

Relative paths resolve against the config file's directory. Unknown keys are
errors naming the file, line and key path.
"""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from agent_runtime.errors import ConfigError
from agent_runtime.services.settings import ServiceSettings
from fleetbase.duration import Duration
from fleetbase.platform import Platform
from fleetbase.version import Version
from states.manifest import HealthCheck, HealthCheckKind
from states.nats import (
    DEFAULT_HEARTBEAT_SUBJECT,
    DEFAULT_NUDGE_SUBJECT,
    NatsConnection,
    validate_subject_template,
)
from states.signing import SignatureError, raw_public_key

__all__ = [
    "ConvergeSettings",
    "DeviceConfig",
    "DeviceNatsSettings",
    "DownloadSettings",
    "ServerSettings",
    "load_config",
    "this_platform",
]

DEFAULT_CONFIG_PATHS = (
    Path("/etc/agent-runtime/config.yaml"),
    Path("C:/ProgramData/AgentRuntime/config.yaml"),
)


def this_platform() -> Platform:
    """The platform family of the machine the runtime runs on."""
    if sys.platform == "win32":
        return Platform.WINDOWS
    if sys.platform == "darwin":
        return Platform.MACOS
    return Platform.LINUX


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DownloadSettings(_Strict):
    """Limits for fetching manifests and artifacts."""

    stall_timeout: Duration = Field(
        default=timedelta(seconds=30), description="end a transfer after this long without bytes"
    )
    connect_timeout: Duration = timedelta(seconds=10)
    max_manifest_bytes: int = Field(default=1024 * 1024, ge=1024)
    retries: int = Field(default=2, ge=0, description="resumed retries of a failed transfer")
    min_speed: int = Field(
        default=1024,
        ge=0,
        description="bytes/s: a transfer whose average speed is below this once "
        "min_speed_grace has passed ends (slow-retrieval attacks); 0 turns the check off",
    )
    min_speed_grace: Duration = Field(
        default=timedelta(seconds=30),
        description="how long a transfer may run before its average speed is checked",
    )
    manifest_timeout: Duration = Field(
        default=timedelta(seconds=60),
        description="limit for reading one manifest or signature in full (read under the "
        "converge lock, before any trust check)",
    )


class ConvergeSettings(_Strict):
    """Periodic converge: every ``interval``, plus a random delay up to ``jitter``."""

    interval: Duration = timedelta(minutes=5)
    jitter: Duration = timedelta(seconds=30)
    poll_interval_min: Duration = Field(
        default=timedelta(seconds=1),
        description="pull mode: a server asking for a shorter (or no, or NaN) poll interval "
        "gets this one",
    )
    poll_interval_max: Duration = Field(
        default=timedelta(days=1),
        description="pull mode: a server asking for a longer (or infinite) poll interval "
        "gets this one",
    )

    @model_validator(mode="after")
    def _poll_bounds(self) -> ConvergeSettings:
        low, high = self.poll_interval_min, self.poll_interval_max
        if low <= timedelta(0) or low > high:
            raise ValueError(
                f"poll_interval_min ({low}) must be above 0 and at most poll_interval_max ({high})"
            )
        return self


class DeviceNatsSettings(NatsConnection):
    """Optional NATS: nudges to check in at once, and the ``nats`` health check kind."""

    nudge_subject: str = Field(
        default=DEFAULT_NUDGE_SUBJECT,
        description="subject the engine nudges this device on ('{device}': the device id)",
    )
    heartbeat_subject: str = Field(
        default=DEFAULT_HEARTBEAT_SUBJECT,
        description="subject this device's agent publishes its heartbeat on",
    )

    @field_validator("nudge_subject", "heartbeat_subject")
    @classmethod
    def _templates(cls, value: str) -> str:
        return validate_subject_template(value)


class ServerSettings(_Strict):
    """Where the engine server is (pull mode) and the file holding this device's token.

    Without a token file the runtime enrolls and writes the token there (mode
    0600): with the device's single-use invite code (``enrollment_code_file`` or
    ``enrollment_code``; the code file is deleted once the code is used) when one
    is configured, else with the fleet's enrollment secret (from
    ``enrollment_secret_file``, ``enrollment_secret`` or
    ``$AGENT_RUNTIME_ENROLLMENT_SECRET``).
    """

    url: str
    token_file: Path
    enrollment_secret: str | None = Field(default=None, repr=False)
    enrollment_secret_file: Path | None = None
    enrollment_code: str | None = Field(
        default=None, repr=False, description="single-use invite code (engine devices invite)"
    )
    enrollment_code_file: Path | None = Field(
        default=None, description="file holding the invite code; deleted after enrollment"
    )
    timeout: Duration = Field(
        default=timedelta(seconds=10), description="limit for one request to the server"
    )
    heartbeat_interval: Duration = Field(
        default=timedelta(seconds=10),
        description="how often the agent's heartbeat is forwarded to the server",
    )
    backoff_base: Duration = Field(
        default=timedelta(seconds=1), description="first retry delay while the server is down"
    )
    backoff_cap: Duration = Field(
        default=timedelta(minutes=5), description="longest retry delay while the server is down"
    )
    nats: DeviceNatsSettings | None = Field(
        default=None, description="NATS for nudges and the nats health check (optional)"
    )

    @field_validator("url")
    @classmethod
    def _http(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"server url must start with http:// or https://, found {url!r}")
        return url.rstrip("/")


class DeviceConfig(_Strict):
    """One device's runtime config file."""

    device: str = Field(min_length=1)
    platform: Platform = Field(default_factory=this_platform)
    agent_root: Path
    layout: Literal["versioned", "in_place"] = "in_place"
    state_dir: Path
    service: ServiceSettings = ServiceSettings()
    health_check: HealthCheck = HealthCheck(
        kind=HealthCheckKind.HEARTBEAT_FILE, path="heartbeat.json"
    )
    trusted_keys: list[str] = Field(
        default_factory=list,
        description="release signing keys trusted directly (threshold 1); with root_keys, "
        "used only until the first keys document is accepted",
    )
    root_keys: list[str] = Field(
        default_factory=list,
        description="root keys that sign the keys document listing the release signing keys",
    )
    root_threshold: int = Field(
        default=1, ge=1, description="distinct root keys that must sign a keys document"
    )
    health_timeout: Duration | None = Field(
        default=None, description="cap on any health check's timeout (tests, slow links)"
    )
    max_attempts: int = Field(default=3, ge=1)
    backup_retention: Duration = timedelta(days=7)
    download: DownloadSettings = DownloadSettings()
    converge: ConvergeSettings = ConvergeSettings()
    server: ServerSettings | None = None
    installed_version: Version | None = Field(
        default=None,
        description="adoption: the version of a field install found without runtime state",
    )
    command: list[str] | None = Field(
        default=None, description="process manager: argv when the release's manifest has none"
    )
    env: dict[str, str] = Field(default_factory=dict, description="extra environment of the agent")
    pointer: Literal["auto", "symlink", "file"] = Field(
        default="auto", description="versioned layout: how `current` is kept (auto: OS default)"
    )
    config_dir: Path | None = Field(
        default=None,
        description="where managed config files and flags.json go (default <state_dir>/"
        "agent-config); the agent finds it in $AGENT_CONFIG_DIR",
    )
    rename_aside: bool | None = Field(
        default=None,
        description="in-place layout: rename a running file to <name>.old before replacing it "
        "(default: only on Windows)",
    )

    @field_validator("trusted_keys", "root_keys")
    @classmethod
    def _keys_parse(cls, keys: list[str], info: ValidationInfo) -> list[str]:
        for i, text in enumerate(keys):
            try:
                raw_public_key(text)
            except SignatureError as e:
                raise ValueError(f"{info.field_name}[{i}]: {e}") from e
        return keys

    @model_validator(mode="after")
    def _some_trust(self) -> DeviceConfig:
        if not self.trusted_keys and not self.root_keys:
            raise ValueError(
                "the device trusts no key: set root_keys (the root keys that sign the keys "
                "document) or trusted_keys (release signing keys)"
            )
        distinct_roots = len({raw_public_key(t) for t in self.root_keys})
        if self.root_keys and self.root_threshold > distinct_roots:
            raise ValueError(
                f"root_threshold {self.root_threshold} is more than the {distinct_roots} "
                "distinct root key(s) listed"
            )
        return self

    @property
    def agent_config_dir(self) -> Path:
        """Where the managed config files and flags.json of the agent live."""
        return self.config_dir if self.config_dir is not None else self.state_dir / "agent-config"

    @property
    def staging_dir(self) -> Path:
        """Where downloads are kept until swapped in."""
        return self.state_dir / "staging"


#: The credential files of a ``nats`` section (relative paths resolve like the others).
NATS_CREDENTIAL_FILES = ("credentials_file", "nkey_seed_file", "user_password_file", "token_file")


def _resolve(base: Path, data: dict[str, Any]) -> dict[str, Any]:
    out = dict(data)
    for key in ("agent_root", "state_dir"):
        if isinstance(out.get(key), str):
            out[key] = str((base / out[key]).resolve())
    server = out.get("server")
    if isinstance(server, dict):
        srv = dict(server)
        for key in ("token_file", "enrollment_secret_file", "enrollment_code_file"):
            if isinstance(srv.get(key), str):
                srv[key] = str(base / srv[key])
        nats = srv.get("nats")
        if isinstance(nats, dict):
            nats = dict(nats)
            for key in NATS_CREDENTIAL_FILES:
                if isinstance(nats.get(key), str):
                    nats[key] = str(base / nats[key])
            srv["nats"] = nats
        out["server"] = srv
    service = out.get("service")
    if isinstance(service, dict):
        svc = dict(service)
        for key in ("state_dir", "log_file", "plist", "python"):
            if isinstance(svc.get(key), str) and key != "python":
                svc[key] = str(base / svc[key])
        out["service"] = svc
    return out


def _line_of(root: Node | None, path: tuple[int | str, ...]) -> int | None:
    node = root
    line = node.start_mark.line + 1 if node is not None else None
    for element in path:
        nxt: Node | None = None
        if isinstance(node, MappingNode):
            for k, v in node.value:
                if isinstance(k, ScalarNode) and k.value == str(element):
                    nxt = v
                    line = k.start_mark.line + 1
        elif (
            isinstance(node, SequenceNode)
            and isinstance(element, int)
            and 0 <= element < len(node.value)
        ):
            nxt = node.value[element]
            line = nxt.start_mark.line + 1
        if nxt is None:
            break
        node = nxt
    return line


def load_config(path: Path) -> DeviceConfig:
    """Read and validate a device config file.

    Raises ConfigError as ``file:line: key.path: message`` for every problem.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the device config: {e}") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the device config must be a mapping of keys to values")
    try:
        return DeviceConfig.model_validate(_resolve(path.parent.resolve(), data))
    except ValidationError as e:
        root = yaml.compose(text)
        lines = []
        for err in e.errors():
            loc = tuple(err["loc"])
            key = ".".join(str(p) for p in loc) or "(top)"
            line = _line_of(root, loc)
            place = f"{path}:{line}" if line else str(path)
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                allowed = _allowed_keys(loc[:-1])
                msg = f"unknown key; allowed here: {', '.join(allowed)}"
            elif "input" in err and not isinstance(err["input"], dict | list):
                msg = f"{msg} (found {err['input']!r})"
            lines.append(f"{place}: {key}: {msg}")
        raise ConfigError("\n".join(lines)) from e


def _allowed_keys(loc: tuple[int | str, ...]) -> list[str]:
    model: type[BaseModel] = DeviceConfig
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field is not None else None
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested:
            return []
        model = nested[0]
    return sorted(model.model_fields)
