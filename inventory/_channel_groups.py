"""Groups that follow a channel (``agent: {channel: beta}``), resolved to a release at load.

After this step every group's ``agent.release`` is set, so everything that reads
a group's release (checks, plans, rollouts) treats a channel group like any
other; ``agent.channel`` and the recorded ``Resolution`` say why.
"""

from __future__ import annotations

from collections.abc import Iterable

from fleetbase.version import Version
from inventory._checks import Origin
from inventory.channels import Channels, Resolution
from inventory.errors import Problem
from inventory.models import Group
from inventory.sources import suggest

__all__ = ["resolve_channel_groups"]


def resolve_channel_groups(
    groups: dict[str, Group],
    origin: Origin,
    channels: Channels,
    releases: Iterable[Version],
    problems: list[Problem],
    *,
    channels_valid: bool,
) -> tuple[dict[str, Group], dict[str, Resolution]]:
    """``groups`` with each channel follower's release filled in, and how each was resolved.

    An unknown channel, or a channel with no release on it or a more stable
    one, is a problem at the group's ``agent.channel``. ``channels_valid``
    False (channels.yaml has problems of its own) skips both, so that one
    mistake does not cause follow-on errors.
    """
    available = list(releases)
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
        found = channels.resolve(agent.channel, available)
        if found is None:
            if channels_valid:
                problems.append(
                    source.problem(
                        path,
                        f"no release is on channel {agent.channel!r} or a more stable one: "
                        "put one there in channels.yaml "
                        "(`engine release promote VERSION CHANNEL`)",
                        at_value=True,
                    )
                )
            resolved[name] = group
            continue
        resolutions[name] = found
        resolved[name] = group.model_copy(
            update={"agent": agent.model_copy(update={"release": found.release})}
        )
    return resolved, resolutions
