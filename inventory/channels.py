"""Release channels: the ordered list of channels and which channel each release is on.

Both live in ``channels.yaml`` at the root of the operator repo, outside the
signed release manifests: a channel is the operator's decision about a
release, so promoting one is a one-line change reviewed in git, never a
re-signing (docs/adr/0017-release-channels.md). A group following a channel
(``agent: {channel: beta}``) runs the newest release on that channel or a
more stable one whose manifest has not expired (devices refuse expired
manifests, so an expired release is skipped and the resolution says so).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fleetbase.clock import utc_text
from fleetbase.version import Version, VersionError
from inventory.errors import Problem
from inventory.models import CHANNEL_PATTERN
from inventory.sources import SourceFile, problems_from_validation_error, suggest

__all__ = [
    "CHANNELS_FILE",
    "DEFAULT_CHANNELS",
    "Channels",
    "ChannelsFile",
    "Resolution",
    "load_channels",
]

CHANNELS_FILE = "channels.yaml"
DEFAULT_CHANNELS = ("stable", "beta", "alpha")
_NAME = re.compile(CHANNEL_PATTERN)


class ChannelsFile(BaseModel):
    """channels.yaml: the channels, most stable first, and the channel of each release."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="Release channels")

    channels: list[str] = Field(
        default_factory=lambda: list(DEFAULT_CHANNELS),
        min_length=1,
        description="channel names, most stable first (default: stable, beta, alpha)",
    )
    releases: dict[str, str] = Field(
        default_factory=dict,
        description="release version -> channel; a release not listed is on no channel",
    )

    @field_validator("channels")
    @classmethod
    def _once_each(cls, names: list[str]) -> list[str]:
        seen: set[str] = set()
        for name in names:
            if not _NAME.fullmatch(name):
                raise ValueError(
                    f"channel name {name!r}: use lower-case letters, digits, '.', '_' and '-' "
                    "(e.g. stable, beta, nightly)"
                )
            if name in seen:
                raise ValueError(f"channel {name!r} is listed twice")
            seen.add(name)
        return names


@dataclass(frozen=True)
class Resolution:
    """What a channel resolved to: the release, and the channel that release is on."""

    channel: str
    release: Version
    on: str
    #: False for the most stable channel (no channel is more stable)
    more_stable: bool = True
    #: newer releases of the channel passed over because their manifest expired, newest first
    skipped: tuple[tuple[Version, datetime], ...] = ()

    def describe(self) -> str:
        """E.g. ``channel beta -> 3.1.0 (newest on beta or more stable; 3.1.0 is on stable)``,
        plus ``; skipped 3.2.0 (manifest expired 2026-11-30T00:00:00Z)`` for expired ones."""
        text = f"channel {self.channel} -> {self.release} (newest on {self.channel}"
        if self.more_stable:
            text += " or more stable"
            if self.on != self.channel:
                text += f"; {self.release} is on {self.on}"
        return f"{text}{self._skipped()})"

    def why(self) -> str:
        """The reason given in a device's plan, e.g. ``channel beta: newest on beta or more
        stable`` (the release itself is the plan's ``desired``)."""
        if not self.more_stable:
            return f"channel {self.channel}: its newest release{self._skipped()}"
        text = f"channel {self.channel}: newest on {self.channel} or more stable"
        if self.on != self.channel:
            text += f", from {self.on}"
        return text + self._skipped()

    def _skipped(self) -> str:
        if not self.skipped:
            return ""
        return "; skipped " + ", ".join(
            f"{version} (manifest expired {utc_text(when)})" for version, when in self.skipped
        )


@dataclass(frozen=True)
class Channels:
    """The channels in order (most stable first) and the channel of each release."""

    order: tuple[str, ...] = DEFAULT_CHANNELS
    of: Mapping[Version, str] = field(default_factory=dict)

    def known(self) -> str:
        """The channel names for messages: ``stable, beta, alpha``."""
        return ", ".join(self.order)

    def rank(self, channel: str) -> int:
        """0 for the most stable channel, 1 for the next...; ValueError for an unknown one."""
        return self.order.index(channel)

    def channel_of(self, release: Version) -> str | None:
        """The channel ``release`` is on, or None."""
        return self.of.get(release)

    def candidates(self, channel: str, releases: Iterable[Version]) -> list[Version]:
        """The ``releases`` on ``channel`` or a more stable one, newest first.

        Raises ValueError for a channel not in ``order``.
        """
        limit = self.rank(channel)
        found: list[Version] = []
        for version in releases:
            on = self.of.get(version)
            if on is not None and self.rank(on) <= limit:
                found.append(version)
        return sorted(found, reverse=True)

    def resolve(
        self,
        channel: str,
        releases: Iterable[Version],
        *,
        expired: Mapping[Version, datetime] | None = None,
    ) -> Resolution | None:
        """The newest of ``releases`` on ``channel`` or a more stable one that is not in
        ``expired`` (release -> when its manifest expired); None: there is none.

        The expired releases newer than the one chosen are recorded in
        ``Resolution.skipped``. Raises ValueError for a channel not in ``order``.
        """
        limit = self.rank(channel)
        skipped: list[tuple[Version, datetime]] = []
        for version in self.candidates(channel, releases):
            when = expired.get(version) if expired else None
            if when is not None:
                skipped.append((version, when))
                continue
            return Resolution(
                channel=channel,
                release=version,
                on=self.of[version],
                more_stable=limit > 0,
                skipped=tuple(skipped),
            )
        return None


def load_channels(
    root: Path,
    releases: Iterable[Version],
    problems: list[Problem],
    *,
    unloadable: AbstractSet[str] = frozenset(),
) -> tuple[Channels, SourceFile | None]:
    """``ROOT/channels.yaml`` validated against the releases (defaults when the file is absent).

    Problems (file, line, key) are appended to ``problems``: an unknown channel
    (naming the allowed ones), a key that is not a version or names no release
    under releases/ (unless it is in ``unloadable``, reported elsewhere).
    """
    path = root / CHANNELS_FILE
    if not path.is_file():
        return Channels(), None
    source = SourceFile.read(path, root)
    data, syntax = source.parse()
    if syntax:
        problems.extend(syntax)
        return Channels(), source
    if data is None:
        return Channels(), source
    if not isinstance(data, dict):
        problems.append(source.problem((), "expected a mapping with 'channels' and/or 'releases'"))
        return Channels(), source
    if "releases" in data and data["releases"] is None:
        data["releases"] = {}
    try:
        parsed = ChannelsFile.model_validate(data)
    except ValidationError as e:
        problems.extend(problems_from_validation_error(source, e, data, ChannelsFile))
        return Channels(), source
    order = tuple(parsed.channels)
    present = {v: v for v in releases}  # a key of "3.0" names the release "3.0.0"
    known_releases = ", ".join(str(v) for v in sorted(present)) or "none"
    of: dict[Version, str] = {}
    for key, channel in parsed.releases.items():
        path_ = ("releases", key)
        try:
            version = Version(key)
        except VersionError as e:
            problems.append(source.problem(path_, str(e)))
            continue
        if channel not in order:
            problems.append(
                source.problem(
                    path_,
                    f"unknown channel {channel!r}; channels are {', '.join(order)}"
                    + suggest(channel, order),
                    at_value=True,
                )
            )
            continue
        if version in of:
            problems.append(source.problem(path_, f"release {version} is listed twice"))
            continue
        canonical = present.get(version)
        if canonical is None:
            if key not in unloadable:
                problems.append(
                    source.problem(
                        path_,
                        f"release {key} is not in releases/ (known: {known_releases})",
                    )
                )
            continue
        of[canonical] = channel
    return Channels(order=order, of=of), source
