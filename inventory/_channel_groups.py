"""Groups that follow a channel (``agent: {channel: beta}``), resolved to a release at load.

After this step every group's ``agent.release`` is set, so everything that reads
a group's release (checks, plans, rollouts) treats a channel group like any
other; ``agent.channel`` and the recorded ``Resolution`` say why. A release
whose manifest has expired is never chosen: devices would refuse it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from fleetbase.clock import utc_text
from fleetbase.version import Version
from inventory._checks import Origin
from inventory.catalog import RELEASES_DIR, LoadedRelease
from inventory.channels import Channels, Resolution
from inventory.errors import Problem
from inventory.models import Group
from inventory.sources import suggest

__all__ = ["resolve_channel_groups"]


def resolve_channel_groups(
    groups: dict[str, Group],
    origin: Origin,
    channels: Channels,
    releases: Mapping[Version, LoadedRelease],
    problems: list[Problem],
    *,
    channels_valid: bool,
    now: datetime,
) -> tuple[dict[str, Group], dict[str, Resolution]]:
    """``groups`` with each channel follower's release filled in, and how each was resolved.

    Releases whose manifest expired at ``now`` or before are skipped (the
    resolution lists them). An unknown channel, or a channel with no
    unexpired release on it or a more stable one, is a problem at the group's
    ``agent.channel`` (naming the expired manifests, if any). ``channels_valid``
    False (channels.yaml has problems of its own) skips both, so that one
    mistake does not cause follow-on errors.
    """
    available = list(releases)
    expired = {v: r.manifest.expires for v, r in releases.items() if r.manifest.expires <= now}
    resolved: dict[str, Group] = {}
    resolutions: dict[str, Resolution] = {}
    for name, group in groups.items():
        agent = group.agent
        if agent is None or agent.channel is None:
            resolved[name] = group
            continue
        path = ("groups", name, "agent", "channel")
        source = origin.group[name]
        if agent.channel not in channels.order:
            if not channels_valid:  # the channel list itself failed to load
                resolved[name] = group
                continue
            problems.append(
                source.problem(
                    path,
                    f"unknown channel {agent.channel!r}; channels are {channels.known()} "
                    "(channels.yaml)" + suggest(agent.channel, channels.order),
                    at_value=True,
                )
            )
            resolved[name] = group
            continue
        found = channels.resolve(agent.channel, available, expired=expired)
        if found is None:
            if channels_valid:
                candidates = channels.candidates(agent.channel, available)
                why = _nothing_on(agent.channel, candidates, releases)
                problems.append(source.problem(path, why, at_value=True))
            resolved[name] = group
            continue
        resolutions[name] = found
        resolved[name] = group.model_copy(
            update={"agent": agent.model_copy(update={"release": found.release})}
        )
    return resolved, resolutions


def _nothing_on(
    channel: str, candidates: list[Version], releases: Mapping[Version, LoadedRelease]
) -> str:
    """Why ``channel`` resolves to nothing: no release on it, or every one has expired."""
    if not candidates:
        return (
            f"no release is on channel {channel!r} or a more stable one: put one there in "
            "channels.yaml (`engine release promote VERSION CHANNEL`)"
        )
    listed = ", ".join(
        f"{v} ({RELEASES_DIR}/{releases[v].path.name} expired "
        f"{utc_text(releases[v].manifest.expires)})"
        for v in candidates
    )
    return (
        f"every release on channel {channel!r} or a more stable one has an expired manifest, "
        f"which devices refuse: {listed}; release a new one (`engine release new`) or re-sign "
        "one with a later `expires`"
    )
