"""`engine release promote VERSION CHANNEL`: put a release on a channel in channels.yaml.

The change is one line of channels.yaml, edited in place (comments and the
rest of the file untouched), validated by loading the whole operator repo,
and left for the operator to review and commit: promoting is a reviewed git
change like any other, and never touches the signed release manifests.
"""

from __future__ import annotations

import difflib
import os
import re
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode

from engine.errors import EngineError
from fleetbase.clock import utc_now
from fleetbase.version import Version, VersionError
from inventory.channels import CHANNELS_FILE, load_channels
from inventory.errors import InventoryError, Problem
from inventory.loader import OperatorRepo, load_operator_repo

__all__ = [
    "GroupMove",
    "PromoteError",
    "Promotion",
    "check_channel",
    "promote",
    "set_release_channel",
]


class PromoteError(EngineError):
    """A promotion is refused: unknown release or channel, a demotion, or a broken repo."""


@dataclass(frozen=True)
class GroupMove:
    """A group following a channel whose release changes with the promotion."""

    group: str
    channel: str
    before: Version
    after: Version


@dataclass(frozen=True)
class Promotion:
    """What `engine release promote` changed (``diff`` empty: nothing to change)."""

    version: Version
    channel: str
    previous: str | None  # the channel the release was on before, if any
    path: Path
    diff: str
    moves: list[GroupMove] = field(default_factory=list)
    #: when the release's manifest expired, if it has: channel followers skip it
    expired: datetime | None = None


_NEW_FILE_HEAD = (
    "# Release channels, most stable first, and the channel of each release.\n"
    "# A group with `agent: {channel: beta}` runs the newest release on beta or a\n"
    "# more stable channel. Promote with `engine release promote VERSION CHANNEL`.\n"
)
_PLAIN = re.compile(r"[a-z][a-z0-9._-]*")
_YAML_WORDS = frozenset({"true", "false", "null", "yes", "no", "on", "off", "y", "n"})


def _scalar(channel: str) -> str:
    """The channel as a YAML scalar that reads back as the same string."""
    if _PLAIN.fullmatch(channel) and channel not in _YAML_WORDS:
        return channel
    return f'"{channel}"'


def _entry(version: Version, channel: str) -> str:
    return f'"{version}": {_scalar(channel)}'


def _line_end(text: str, index: int) -> int:
    """The index just past the newline ending the line that holds ``index``."""
    newline = text.find("\n", index)
    return len(text) if newline < 0 else newline + 1


def _same_version(key: Node, version: Version) -> bool:
    if not isinstance(key, ScalarNode):
        return False
    try:
        return Version(key.value) == version
    except VersionError:
        return False


def set_release_channel(text: str, version: Version, channel: str) -> str:
    """``text`` (a channels.yaml) with ``version`` on ``channel``: its value replaced in place,
    or a new entry added to ``releases`` (a block or flow mapping, or a new section).

    Everything else in the text, comments included, is kept byte for byte.
    Raises PromoteError when the text is not a mapping (fix the file first).
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        raise PromoteError(f"{CHANNELS_FILE} is not valid YAML: {e}") from e
    entry = _entry(version, channel)
    if root is None:
        return _append_section(text, entry)
    if not isinstance(root, MappingNode):
        raise PromoteError(f"{CHANNELS_FILE} must be a mapping with 'channels' and 'releases'")
    releases = next(
        (v for k, v in root.value if isinstance(k, ScalarNode) and k.value == "releases"), None
    )
    if releases is None:
        return _append_section(text, entry)
    if isinstance(releases, ScalarNode):  # `releases:` with nothing under it, or null
        start, end = releases.start_mark.index, releases.end_mark.index
        return f"{text[:start].rstrip(' ')}\n  {entry}{text[end:]}"
    if not isinstance(releases, MappingNode):
        raise PromoteError(f"{CHANNELS_FILE}: releases must be a mapping of version: channel")
    for key, value in releases.value:
        if _same_version(key, version):
            start, end = value.start_mark.index, value.end_mark.index
            return text[:start] + _scalar(channel) + text[end:]
    if releases.flow_style:
        close = releases.end_mark.index - 1  # the '}'
        joiner = ", " if releases.value else ""
        return text[:close].rstrip() + joiner + entry + text[close:]
    if not releases.value:
        return _append_section(text, entry)
    first_key = releases.value[0][0]
    indent = " " * first_key.start_mark.column
    after = _line_end(text, releases.value[-1][1].end_mark.index)
    head = text[:after] if text[:after].endswith("\n") else text[:after] + "\n"
    return f"{head}{indent}{entry}\n{text[after:]}"


def _append_section(text: str, entry: str) -> str:
    head = text if not text or text.endswith("\n") else text + "\n"
    return f"{head}releases:\n  {entry}\n"


def _write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load(root: Path) -> OperatorRepo:
    try:
        return load_operator_repo(root)
    except InventoryError as e:
        raise PromoteError(f"the operator repo has problems; fix them first:\n{e.render()}") from e


def _moves(before: OperatorRepo, after: OperatorRepo) -> list[GroupMove]:
    found: list[GroupMove] = []
    for name, then in sorted(before.resolutions.items()):
        now = after.resolutions.get(name)
        if now is not None and now.release != then.release:
            found.append(GroupMove(name, then.channel, then.release, now.release))
    return found


def check_channel(root: Path, channel: str) -> None:
    """Raise PromoteError unless ``channel`` is one of ROOT's channels (channels.yaml, or
    the default ones), without loading the rest of the repo."""
    problems: list[Problem] = []
    channels, _ = load_channels(root, [], problems)
    if any(p.key_path == "channels" or p.key_path.startswith("channels[") for p in problems):
        raise PromoteError(f"{CHANNELS_FILE} has problems:\n{InventoryError(problems).render()}")
    if channel not in channels.order:
        raise PromoteError(f"unknown channel {channel!r}; channels are {channels.known()}")


def promote(root: Path, version: Version, channel: str, *, force: bool = False) -> Promotion:
    """Put release ``version`` on ``channel`` in ROOT/channels.yaml (created when missing).

    Refuses (PromoteError) a release not under releases/, a channel not in the
    repo's channels, and, unless ``force``, a demotion (to a less stable
    channel than the release is on): that would send the groups following
    the more stable channel back to an older release. The edited repo is
    loaded before the change is kept; the file is restored when it fails.
    """
    repo = _load(root)
    canonical = next((v for v in repo.releases if v == version), None)
    if canonical is None:
        known = ", ".join(str(v) for v in sorted(repo.releases)) or "none"
        raise PromoteError(f"release {version} is not in releases/ (known: {known})")
    channels = repo.channels
    if channel not in channels.order:
        raise PromoteError(f"unknown channel {channel!r}; channels are {channels.known()}")
    path = root / CHANNELS_FILE
    previous = channels.channel_of(canonical)
    if previous == channel:
        return Promotion(canonical, channel, previous, path, diff="")
    if previous is not None and channels.rank(channel) > channels.rank(previous) and not force:
        raise PromoteError(
            f"release {canonical} is on {previous}; moving it to the less stable {channel} "
            f"is a demotion (groups following {previous} would no longer get it): "
            "pass --force if that is what you want"
        )
    existed = path.is_file()
    old = path.read_text(encoding="utf-8") if existed else ""
    if not existed:
        old_for_edit = f"{_NEW_FILE_HEAD}channels: [{', '.join(channels.order)}]\n"
    else:
        old_for_edit = old
    new = set_release_channel(old_for_edit, canonical, channel)
    _write(path, new)
    try:
        after = load_operator_repo(root)
    except InventoryError as e:
        if existed:
            _write(path, old)
        else:
            path.unlink(missing_ok=True)
        raise PromoteError(
            f"putting {canonical} on {channel} would break the operator repo; "
            f"{CHANNELS_FILE} is unchanged:\n{e.render()}"
        ) from e
    diff = "".join(
        difflib.unified_diff(
            old.splitlines(keepends=True),
            new.splitlines(keepends=True),
            fromfile=f"a/{CHANNELS_FILE}" if existed else "/dev/null",
            tofile=f"b/{CHANNELS_FILE}",
        )
    )
    expires = repo.releases[canonical].manifest.expires
    return Promotion(
        canonical, channel, previous, path, diff, _moves(repo, after),
        expired=expires if expires <= utc_now() else None,
    )  # fmt: skip
