"""Validated models of the operator repo's inventory (devices, groups, settings).

Operator-written YAML: every model forbids unknown keys, so a typo fails with
its file, line and key path instead of being ignored.
"""

from __future__ import annotations

import itertools
from datetime import timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from fleetbase.duration import Duration
from fleetbase.platform import Platform
from fleetbase.version import Version
from states.config_bundle import FlagValue
from states.nats import (
    DEFAULT_HEARTBEAT_SUBJECT,
    DEFAULT_NUDGE_SUBJECT,
    NatsConnection,
    validate_subject_template,
)

__all__ = [
    "CHANNEL_PATTERN",
    "AgentSpec",
    "ChannelName",
    "Device",
    "EngineSettings",
    "FailurePolicy",
    "Group",
    "Inventory",
    "InventoryFile",
    "MaintenanceWindow",
    "Match",
    "OnFailure",
    "Platform",
    "RollbackScope",
    "RolloutPolicy",
    "RuntimeSpec",
    "ServerLimits",
    "SshSettings",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


StrOrList = str | list[str]


class Match(_Strict):
    """Selector of devices: every key given must match; a list means any of its values."""

    platform: Platform | list[Platform] | None = None
    site: StrOrList | None = None
    tags: StrOrList | None = None
    labels: dict[str, StrOrList] | None = None

    def matches(self, device: Device) -> bool:
        """True when the device satisfies every key of this selector."""
        if self.platform is not None:
            allowed = self.platform if isinstance(self.platform, list) else [self.platform]
            if device.platform not in allowed:
                return False
        if self.site is not None:
            sites = self.site if isinstance(self.site, list) else [self.site]
            if device.site not in sites:
                return False
        if self.tags is not None:
            wanted = self.tags if isinstance(self.tags, list) else [self.tags]
            if not any(t in device.tags for t in wanted):
                return False
        if self.labels is not None:
            for key, value in self.labels.items():
                values = value if isinstance(value, list) else [value]
                if device.labels.get(key) not in values:
                    return False
        return True

    @property
    def is_empty(self) -> bool:
        """A selector with no keys matches nothing (groups list members explicitly)."""
        return (
            self.platform is None
            and self.site is None
            and self.tags is None
            and (self.labels is None)
        )


class SshSettings(_Strict):
    """How the engine reaches a device over SSH (`engine bootstrap`, `apply --transport ssh`).

    A group's value is the default for its devices; a device's own value overrides
    it key by key. ``{device}`` in a text value is replaced by the device id.
    """

    host: str | None = Field(default=None, min_length=1, description="host name or address")
    port: int | None = Field(default=None, ge=1, le=65535, description="default 22")
    user: str | None = Field(default=None, min_length=1, description="login user")
    key_file: str | None = Field(
        default=None, description="private key file (relative: to the operator repo)"
    )
    known_hosts: str | None = Field(
        default=None,
        description="known_hosts file checked for the host key (relative: to the operator "
        "repo); default .engine/known_hosts in the operator repo",
    )
    agent_root: str | None = Field(
        default=None,
        description="agentless devices: where the agent is installed on the host "
        "(default /opt/Wegweiser/Agent)",
    )
    runtime_dir: str | None = Field(
        default=None,
        description="agentless devices: the runtime's directory on the host, relative to "
        "the login's home unless absolute (default .agent-runtime)",
    )
    service: Literal["systemd", "launchd", "process"] | None = Field(
        default=None,
        description="agentless devices: the service manager running the agent "
        "(default systemd on linux, launchd on macos)",
    )
    runtime_config: dict[str, Any] | None = Field(
        default=None,
        description="agentless devices: more keys of the device config the engine writes "
        "on the host (e.g. env, health_timeout)",
    )

    def over(self, default: SshSettings | None) -> SshSettings:
        """These settings with every key they leave unset taken from ``default``."""
        if default is None:
            return self
        mine = self.model_dump(exclude_unset=True, exclude_none=True)
        return default.model_copy(update=mine)


class Device(_Strict):
    """One device of the fleet as the operator declares it."""

    platform: Platform
    site: str | None = None
    tags: list[str] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)
    pin: Version | None = None
    ssh: SshSettings | None = None
    vars: dict[str, Any] = Field(
        default_factory=dict,
        description="template variables of the device's config files (override the group's)",
    )
    flags: dict[str, FlagValue] = Field(
        default_factory=dict, description="feature flags (override the group's)"
    )


#: What a release channel's name looks like: lower-case letters, digits, '.', '_' and '-'.
CHANNEL_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
#: A release channel's name (channels.yaml).
ChannelName = Annotated[str, Field(pattern=CHANNEL_PATTERN)]


class AgentSpec(_Strict):
    """Which agent release a group should run: one ``release``, or the newest on a ``channel``.

    The loader resolves a ``channel`` to its release (``inventory.channels``), so
    after loading ``release`` is set on every group's agent; ``channel`` then
    says where it came from.
    """

    release: Version | None = Field(default=None, description="the exact release to run")
    channel: ChannelName | None = Field(
        default=None,
        description="follow this channel (channels.yaml): run the newest release on it "
        "or on a more stable channel",
    )

    @model_validator(mode="after")
    def _release_or_channel(self) -> AgentSpec:
        if (self.release is None) == (self.channel is None):
            raise ValueError(
                "give exactly one of 'release' (a version) or 'channel' (e.g. stable, beta)"
            )
        return self


class RuntimeSpec(_Strict):
    """Which runtime release a group's devices should run (``runtime-releases/<release>/``)."""

    release: Version


class OnFailure(StrEnum):
    """What a rollout does when a wave crosses its failure threshold."""

    HALT = "halt"  # stop and plan devices that took the release back to the previous one
    PAUSE = "pause"  # stop handing out the release; an operator decides


def _increase(value: Any) -> Any:
    """``"25%"`` as 0.25; a plain number is already a fraction (0.25), like the rates."""
    if isinstance(value, str):
        text = value.strip()
        if not text.endswith("%"):
            raise ValueError(f"{value!r} is not an increase: write a percentage such as '25%'")
        try:
            return float(text[:-1]) / 100
        except ValueError:
            raise ValueError(
                f"{value!r} is not an increase: write a percentage such as '25%'"
            ) from None
    return value


#: A relative increase, written ``25%`` (or 0.25); more than 0.
Increase = Annotated[float, BeforeValidator(_increase), Field(gt=0, le=1000)]


class RollbackScope(StrEnum):
    """Which devices a halt sends back to the release they came from."""

    ROLLOUT = "rollout"  # the devices of the halted rollout only
    RELEASE = "release"  # every rollout of the release, its gates (canaries) included


class FailurePolicy(_Strict):
    """``on_failure`` written out: what a tripped rollout does, and what a halt rolls back."""

    action: OnFailure = OnFailure.HALT
    rollback: RollbackScope = Field(
        default=RollbackScope.ROLLOUT,
        description="rollout: the halted rollout's devices go back; release: every rollout "
        "of the release goes back, gates included (a halt only)",
    )

    @model_validator(mode="after")
    def _rollback_needs_halt(self) -> FailurePolicy:
        if self.action is OnFailure.PAUSE and self.rollback is RollbackScope.RELEASE:
            raise ValueError(
                "rollback: release needs action: halt (a paused rollout rolls nothing back)"
            )
        return self


class RolloutPolicy(_Strict):
    """How fast a release moves through a group, and when it stops itself."""

    waves: list[Annotated[float, Field(gt=0, le=100)]] = Field(
        default_factory=lambda: [10.0, 50.0, 100.0],
        description="cumulative percentages of the group, strictly increasing, ending at 100",
    )
    max_failure_rate: float = Field(default=0.05, ge=0, le=1)
    min_success_rate: float = Field(default=0.95, ge=0, le=1)
    soak: Duration = timedelta(minutes=10)
    max_parallel: int = Field(default=50, ge=1)
    on_failure: OnFailure | FailurePolicy = Field(
        default=OnFailure.HALT,
        description="halt | pause, or {action: halt|pause, rollback: rollout|release}",
    )
    after: list[str] = Field(
        default_factory=list,
        description="groups whose rollout of the same release must complete and soak "
        "before this group's first wave opens (e.g. [canary])",
    )
    max_cpu_increase: Increase | None = Field(
        default=None,
        description="fail a device whose agent uses this much more CPU than on its previous "
        "release (e.g. '25%'); it rolls back and counts against max_failure_rate",
    )
    max_rss_increase: Increase | None = Field(
        default=None,
        description="fail a device whose agent's resident memory grew this much over its "
        "previous release's (e.g. '25%'); it rolls back and counts against max_failure_rate",
    )

    @property
    def failure(self) -> FailurePolicy:
        """``on_failure`` in its long form, whichever form the operator wrote."""
        if isinstance(self.on_failure, FailurePolicy):
            return self.on_failure
        return FailurePolicy(action=self.on_failure)

    @field_validator("after")
    @classmethod
    def _after_once_each(cls, after: list[str]) -> list[str]:
        seen: set[str] = set()
        for name in after:
            if name in seen:
                raise ValueError(f"after names group {name!r} twice")
            seen.add(name)
        return after

    @field_validator("waves")
    @classmethod
    def _waves_increase_to_100(cls, waves: list[float]) -> list[float]:
        if not waves:
            raise ValueError("waves must list at least one percentage, ending at 100")
        for before, after in itertools.pairwise(waves):
            if after <= before:
                raise ValueError(
                    f"waves must be strictly increasing cumulative percentages; "
                    f"{after:g} follows {before:g}"
                )
        if waves[-1] != 100:
            raise ValueError(f"the last wave must be 100 (the whole group), found {waves[-1]:g}")
        return waves


#: The five fields of a cron expression and what each takes.
_CRON_FIELDS = (
    ("minute", "0-59"),
    ("hour", "0-23"),
    ("day-of-month", "1-31"),
    ("month", "1-12 or jan-dec"),
    ("day-of-week", "0-7 or sun-sat (0 and 7 are Sunday)"),
)


def _cron_problem(cron: str) -> str:
    """Why ``cron`` is not a cron expression, naming the first bad field and its range."""
    from croniter import croniter

    fields = cron.split()
    if len(fields) != len(_CRON_FIELDS):
        return (
            f"{cron!r} is not a cron expression: expected five fields "
            f"'minute hour day-of-month month day-of-week', found {len(fields)}, e.g. '0 2 * * *'"
        )
    for index, (name, allowed) in enumerate(_CRON_FIELDS):
        alone = ["*"] * len(_CRON_FIELDS)
        alone[index] = fields[index]
        if not croniter.is_valid(" ".join(alone)):
            return (
                f"{cron!r}: the {name} field {fields[index]!r} is not valid; "
                f"{name} takes {allowed}, with lists (1,3), ranges (1-5) and steps (*/15)"
            )
    return (
        f"{cron!r} is not a cron expression: expected five fields "
        "'minute hour day-of-month month day-of-week', e.g. '0 2 * * *'"
    )


class MaintenanceWindow(_Strict):
    """When devices of a group may be touched: a cron start, a duration, a time zone."""

    cron: str
    duration: Duration
    timezone: str = "UTC"

    @field_validator("cron")
    @classmethod
    def _cron_is_valid(cls, cron: str) -> str:
        from croniter import croniter

        if not croniter.is_valid(cron):
            raise ValueError(_cron_problem(cron))
        return cron

    @field_validator("timezone")
    @classmethod
    def _timezone_is_known(cls, tz: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError) as e:
            raise ValueError(
                f"{tz!r} is not a known IANA time zone (e.g. UTC, Europe/Berlin)"
            ) from e
        return tz

    @field_validator("duration")
    @classmethod
    def _duration_positive(cls, duration: timedelta) -> timedelta:
        if duration <= timedelta(0) or duration > timedelta(days=7):
            raise ValueError("duration must be more than 0 and at most 7d")
        return duration


class Group(_Strict):
    """A set of devices (by selector and/or explicit members) and what they should run."""

    match: Match = Field(default_factory=Match)
    members: list[str] = Field(default_factory=list)
    priority: int = 0
    agent: AgentSpec | None = None
    runtime: RuntimeSpec | None = None
    rollout: RolloutPolicy = Field(default_factory=RolloutPolicy)
    maintenance_window: MaintenanceWindow | None = None
    description: str | None = None
    ssh: SshSettings | None = Field(
        default=None, description="SSH settings of the group's devices (a device's own win)"
    )
    vars: dict[str, Any] = Field(
        default_factory=dict, description="template variables of the members' config files"
    )
    flags: dict[str, FlagValue] = Field(
        default_factory=dict, description="feature flags of the members (a device's own win)"
    )


class Inventory(_Strict):
    """All devices and groups of the operator repo, merged from every inventory file."""

    devices: dict[str, Device] = Field(default_factory=dict)
    groups: dict[str, Group] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _members_exist(self) -> Inventory:
        for name, group in self.groups.items():
            for member in group.members:
                if member not in self.devices:
                    raise ValueError(
                        f"group {name!r} lists member {member!r}, which is not a device"
                    )
        return self


class EngineNatsSettings(NatsConnection):
    """engine.yaml ``nats``: nudge devices when a wave opens, record agents' heartbeats."""

    nudge_subject: str = Field(
        default=DEFAULT_NUDGE_SUBJECT, description="subject of a device's nudges ('{device}')"
    )
    nudge_spread: Duration = Field(
        default=timedelta(seconds=2),
        description="a nudged device waits a random share of this before checking in",
    )
    heartbeats: bool = Field(default=True, description="record agents' heartbeats from NATS")
    heartbeat_subject: str = Field(
        default=DEFAULT_HEARTBEAT_SUBJECT,
        description="subject agents publish heartbeats on ('{device}': the device id)",
    )
    stream: str = Field(
        default="FLEET_HEARTBEATS",
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="JetStream stream holding the heartbeats",
    )
    consumer: str = Field(
        default="engine",
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="durable JetStream consumer the engine reads heartbeats with",
    )
    create_stream: bool = Field(
        default=True, description="create the stream when missing (else it must exist)"
    )
    stream_max_age: Duration = Field(
        default=timedelta(hours=1), description="how long the stream keeps heartbeats"
    )

    @field_validator("nudge_subject", "heartbeat_subject")
    @classmethod
    def _templates(cls, value: str) -> str:
        return validate_subject_template(value)

    @field_validator("nudge_spread")
    @classmethod
    def _spread_bounded(cls, value: timedelta) -> timedelta:
        if value < timedelta(0) or value > timedelta(minutes=5):
            raise ValueError("nudge_spread must be between 0s and 5m")
        return value


class ServerLimits(_Strict):
    """engine.yaml ``server_limits``: what one client may cost `engine serve` (docs/server.md)."""

    header_timeout: Duration = Field(
        default=timedelta(seconds=10),
        description="a connection whose request line and headers take longer is closed",
    )
    keep_alive_timeout: Duration = Field(
        default=timedelta(seconds=5),
        description="an idle keep-alive connection is closed after this long",
    )
    max_connections: int = Field(
        default=1000, ge=1, le=1_000_000, description="open connections per worker process"
    )
    events_per_minute: int = Field(
        default=120, ge=1, le=100_000, description="step events one device may post per minute"
    )
    events_burst: int = Field(
        default=300, ge=100, le=1_000_000, description="step events one device may post at once"
    )
    events_kept_per_device: int = Field(
        default=1000, ge=1, le=10_000_000, description="newest step events kept per device"
    )
    event_retention: Duration = Field(
        default=timedelta(days=30), description="step events older than this are deleted"
    )


class EngineSettings(_Strict):
    """engine.yaml: optional settings of the operator repo."""

    state: str | None = Field(
        default=None, description="SQLAlchemy URL of the store; default sqlite at .engine/state.db"
    )
    server_url: str | None = None
    signing_key: str | None = Field(
        default=None, description="path of the ed25519 private key used by `engine release sign`"
    )
    trusted_keys: list[str] = Field(
        default_factory=list, description="paths of public keys whose signatures the engine checks"
    )
    stale_after: Duration = Field(
        default=timedelta(days=7),
        description="a device whose last report is older than this is planned as blocked",
    )
    poll_interval: Duration = Field(
        default=timedelta(seconds=60),
        description="engine serve: how often devices check in (jitter of 10% is added)",
    )
    field_release: Version | None = Field(
        default=None,
        description="engine serve: the release /diags/persistentagentversion and "
        "/installerFiles describe; default the newest release whose rollouts all "
        "completed, else the known release most devices report",
    )
    server_limits: ServerLimits = Field(
        default_factory=ServerLimits,
        description="engine serve: timeouts, connection cap, event quotas and retention",
    )
    runtime_bundles: str = Field(
        default=".engine/runtime-bundles",
        description="directory of runtime bundles: `engine runtime bundle` writes them there, "
        "`engine serve` serves them (relative to the operator repo, or absolute)",
    )
    nats: EngineNatsSettings | None = Field(
        default=None,
        description="engine serve: NATS for nudges and agents' heartbeats (off when absent)",
    )
    secrets_file: str | None = Field(
        default=None,
        description="YAML file of the secret values config templates read ({{ secrets.NAME }}); "
        "relative to the operator repo, readable by its owner only (0600), kept out of git; "
        "$ENGINE_SECRETS_FILE overrides it",
    )


class InventoryFile(BaseModel):
    """One file under inventory/: some devices and/or groups (merged with the others)."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="Fleet inventory file")

    devices: dict[str, Device] = Field(
        default_factory=dict, description="devices by id; an id may appear in one file only"
    )
    groups: dict[str, Group] = Field(
        default_factory=dict, description="groups by name; a name may appear in one file only"
    )
