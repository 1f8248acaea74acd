"""Release channels: resolution (order, the more-stable rule, pre-releases) and validation."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetbase.version import Version
from inventory.channels import Channels, Resolution
from inventory.errors import InventoryError
from inventory.loader import load_operator_repo
from inventory.schema import schema_for
from tests.inventory.conftest import RepoMaker, manifest_text

V = Version

DEVICES = """\
devices:
  srv-1: {platform: linux}
  srv-2: {platform: linux}
  srv-3: {platform: linux, pin: '3.0.0'}
"""

GROUPS = """\
groups:
  early:
    members: [srv-1]
    priority: 10
    agent: {channel: beta}
  prod:
    members: [srv-2, srv-3]
    agent: {channel: stable}
"""

CHANNELS = """\
# the order of the channels, most stable first
channels: [stable, beta, alpha]
releases:
  "3.0.0": stable
  "3.1.0-beta.1": beta
  "3.1.0-beta.2": beta   # the second beta
"""

RELEASES = ("3.0.0", "3.1.0-beta.1", "3.1.0-beta.2", "3.1.0", "3.2.0-alpha.1")


def _repo(make_repo: RepoMaker, **overrides: str | None) -> Path:
    files: dict[str, str | None] = {
        "inventory/devices.yaml": DEVICES,
        "inventory/groups.yaml": GROUPS,
        "channels.yaml": CHANNELS,
    }
    for serial, version in enumerate(RELEASES, start=1):
        files[f"releases/{version}.yaml"] = manifest_text(version, serial)
    files.update({k.replace("__", "/").replace("_yaml", ".yaml"): v for k, v in overrides.items()})
    return make_repo(files, base=False)


def _problems(root: Path) -> list[str]:
    with pytest.raises(InventoryError) as info:
        load_operator_repo(root)
    return [str(p) for p in info.value.problems]


# -- resolution ----------------------------------------------------------------------------


def test_resolve_takes_the_newest_on_the_channel_or_a_more_stable_one() -> None:
    """beta: the newest beta or stable release; stable never takes a beta; alpha takes all."""
    channels = Channels(
        order=("stable", "beta", "alpha"),
        of={V("3.0.0"): "stable", V("3.1.0-beta.2"): "beta", V("3.2.0-alpha.1"): "alpha"},
    )
    everything = [V(v) for v in RELEASES]
    stable = Resolution("stable", V("3.0.0"), "stable", more_stable=False)
    assert channels.resolve("stable", everything) == stable
    assert channels.resolve("beta", everything) == Resolution("beta", V("3.1.0-beta.2"), "beta")
    assert channels.resolve("alpha", everything) == Resolution("alpha", V("3.2.0-alpha.1"), "alpha")


def test_a_stable_release_newer_than_every_beta_is_what_beta_followers_get() -> None:
    """3.1.0 promoted to stable sorts after its pre-releases: the beta followers take it."""
    channels = Channels(of={V("3.1.0-beta.2"): "beta", V("3.1.0"): "stable"})
    found = channels.resolve("beta", [V("3.1.0-beta.2"), V("3.1.0")])
    assert found == Resolution("beta", V("3.1.0"), "stable")
    assert found.describe() == (
        "channel beta -> 3.1.0 (newest on beta or more stable; 3.1.0 is on stable)"
    )


def test_releases_on_no_channel_or_absent_are_never_picked() -> None:
    """A release without a channel is not followed; only releases passed in count."""
    channels = Channels(of={V("3.0.0"): "stable", V("3.1.0"): "stable"})
    assert channels.resolve("stable", [V("3.0.0"), V("3.2.0")]) == Resolution(
        "stable", V("3.0.0"), "stable", False
    )
    assert Channels().resolve("beta", [V("3.0.0")]) is None
    with pytest.raises(ValueError):
        Channels().resolve("nightly", [V("3.0.0")])


def test_describe_texts() -> None:
    """What `engine plan` prints about a resolution."""
    assert Resolution("beta", V("3.1.0-beta.2"), "beta").describe() == (
        "channel beta -> 3.1.0-beta.2 (newest on beta or more stable)"
    )
    assert Resolution("stable", V("3.0.0"), "stable", False).describe() == (
        "channel stable -> 3.0.0 (newest on stable)"
    )
    assert Resolution("stable", V("3.0.0"), "stable", False).why() == (
        "channel stable: its newest release"
    )
    assert Resolution("beta", V("3.1.0"), "beta").why() == (
        "channel beta: newest on beta or more stable"
    )
    assert Resolution("beta", V("3.1.0"), "stable").why() == (
        "channel beta: newest on beta or more stable, from stable"
    )


def test_expired_releases_are_skipped_newest_first_and_named() -> None:
    """The newest unexpired candidate wins; the newer expired ones are recorded, newest first;
    an older expired release is not mentioned; all expired: nothing."""
    channels = Channels(
        of={V("3.0.0"): "stable", V("3.0.1"): "stable", V("3.1.0-beta.1"): "beta",
            V("3.1.0-beta.2"): "beta"}
    )  # fmt: skip
    gone = datetime(2026, 11, 1, tzinfo=UTC)
    expired = {V("3.1.0-beta.2"): gone, V("3.1.0-beta.1"): gone, V("3.0.0"): gone}
    found = channels.resolve("beta", list(channels.of), expired=expired)
    assert found == Resolution(
        "beta", V("3.0.1"), "stable",
        skipped=((V("3.1.0-beta.2"), gone), (V("3.1.0-beta.1"), gone)),
    )  # fmt: skip
    assert found.describe() == (
        "channel beta -> 3.0.1 (newest on beta or more stable; 3.0.1 is on stable; skipped "
        "3.1.0-beta.2 (manifest expired 2026-11-01T00:00:00Z), 3.1.0-beta.1 (manifest expired "
        "2026-11-01T00:00:00Z))"
    )
    assert found.why().startswith(
        "channel beta: newest on beta or more stable, from stable; skipped 3.1.0-beta.2 "
    )
    stable = channels.resolve("stable", list(channels.of), expired={V("3.0.1"): gone})
    assert stable is not None and stable.release == V("3.0.0")
    assert stable.why() == (
        "channel stable: its newest release; skipped 3.0.1 (manifest expired 2026-11-01T00:00:00Z)"
    )
    everything = dict.fromkeys(channels.of, gone)
    assert channels.resolve("beta", list(channels.of), expired=everything) is None
    assert channels.candidates("beta", list(channels.of))[0] == V("3.1.0-beta.2")


def test_loader_judges_expiry_at_now(make_repo: RepoMaker) -> None:
    """The same files resolve differently before and after a manifest's expiry."""
    root = _repo(make_repo)
    (root / "releases" / "3.1.0-beta.2.yaml").write_text(
        manifest_text("3.1.0-beta.2", 3).replace("2036-01-01T00:00:00Z", "2027-01-01T00:00:00Z")
    )
    before = load_operator_repo(root, now=datetime(2026, 12, 31, tzinfo=UTC))
    assert before.resolutions["early"].release == V("3.1.0-beta.2")
    after = load_operator_repo(root, now=datetime(2027, 1, 1, tzinfo=UTC))
    assert after.resolutions["early"].release == V("3.1.0-beta.1")
    assert after.resolutions["early"].skipped == (
        (V("3.1.0-beta.2"), datetime(2027, 1, 1, tzinfo=UTC)),
    )
    assert before.digest == after.digest  # the files are the same


# -- loading -------------------------------------------------------------------------------


def test_loader_resolves_groups_that_follow_a_channel(make_repo: RepoMaker) -> None:
    """Every group's agent.release is set after loading; the resolution is recorded."""
    repo = load_operator_repo(_repo(make_repo))
    early, prod = repo.inventory.groups["early"].agent, repo.inventory.groups["prod"].agent
    assert early is not None and prod is not None
    assert (early.channel, early.release) == ("beta", V("3.1.0-beta.2"))
    assert (prod.channel, prod.release) == ("stable", V("3.0.0"))
    assert repo.resolutions["early"].on == "beta"
    assert repo.channels.channel_of(V("3.1.0-beta.1")) == "beta"
    assert repo.channels.channel_of(V("3.1.0")) is None
    assert "channels.yaml" in repo.file_digests  # a saved plan is bound to it


def test_without_channels_yaml_the_default_channels_exist_but_hold_no_release(
    make_repo: RepoMaker,
) -> None:
    """No channels.yaml: stable, beta and alpha exist; a group following one has nothing."""
    root = _repo(make_repo, channels_yaml=None)
    assert _problems(root) == [
        "inventory/groups.yaml:5:22: groups.early.agent.channel: no release is on channel "
        "'beta' or a more stable one: put one there in channels.yaml "
        "(`engine release promote VERSION CHANNEL`)",
        "inventory/groups.yaml:8:22: groups.prod.agent.channel: no release is on channel "
        "'stable' or a more stable one: put one there in channels.yaml "
        "(`engine release promote VERSION CHANNEL`)",
    ]


def test_operator_defined_channels(make_repo: RepoMaker) -> None:
    """channels: [stable, beta, nightly]: nightly followers take the newest of all three."""
    channels = CHANNELS.replace("[stable, beta, alpha]", "[stable, beta, nightly]")
    channels += '  "3.2.0-alpha.1": nightly\n'
    groups = GROUPS.replace("channel: beta", "channel: nightly")
    root = _repo(make_repo, channels_yaml=channels, inventory__groups_yaml=groups)
    repo = load_operator_repo(root)
    assert repo.resolutions["early"].release == V("3.2.0-alpha.1")
    assert repo.channels.order == ("stable", "beta", "nightly")


# -- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        pytest.param(
            {"inventory__groups_yaml": GROUPS.replace("{channel: beta}", "{channel: nightly}")},
            [
                "inventory/groups.yaml:5:22: groups.early.agent.channel: unknown channel "
                "'nightly'; channels are stable, beta, alpha (channels.yaml)"
            ],
            id="group follows an unknown channel",
        ),
        pytest.param(
            {"inventory__groups_yaml": GROUPS.replace("{channel: beta}", "{channel: betta}")},
            [
                "inventory/groups.yaml:5:22: groups.early.agent.channel: unknown channel "
                "'betta'; channels are stable, beta, alpha (channels.yaml); did you mean 'beta'?"
            ],
            id="typo in a channel name",
        ),
        pytest.param(
            {
                "inventory__groups_yaml": GROUPS.replace(
                    "{channel: beta}", "{channel: beta, release: '3.0.0'}"
                )
            },
            [
                "inventory/groups.yaml:5:12: groups.early.agent: give exactly one of 'release' "
                "(a version) or 'channel' (e.g. stable, beta)"
            ],
            id="both release and channel",
        ),
        pytest.param(
            {"inventory__groups_yaml": GROUPS.replace("{channel: beta}", "{}")},
            [
                "inventory/groups.yaml:5:12: groups.early.agent: give exactly one of 'release' "
                "(a version) or 'channel' (e.g. stable, beta)"
            ],
            id="neither release nor channel",
        ),
        pytest.param(
            {"channels_yaml": CHANNELS.replace('"3.1.0-beta.1": beta', '"3.1.0-beta.1": bta')},
            [
                "channels.yaml:5:19: releases.3.1.0-beta.1: unknown channel 'bta'; channels are "
                "stable, beta, alpha; did you mean 'beta'?"
            ],
            id="release on an unknown channel",
        ),
        pytest.param(
            {"channels_yaml": CHANNELS + '  "4.0.0": stable\n'},
            [
                "channels.yaml:7:3: releases.4.0.0: release 4.0.0 is not in releases/ (known: "
                "3.0.0, 3.1.0-beta.1, 3.1.0-beta.2, 3.1.0, 3.2.0-alpha.1)"
            ],
            id="release that does not exist",
        ),
        pytest.param(
            {"channels_yaml": CHANNELS + "  latest: stable\n"},
            [
                "channels.yaml:7:3: releases.latest: 'latest' is not a version: expected "
                "numbers separated by dots, optionally followed by -prerelease and +build "
                "(e.g. 3.0.1, 3.1.0-rc1)"
            ],
            id="key that is not a version",
        ),
        pytest.param(
            {"channels_yaml": CHANNELS.replace("[stable, beta, alpha]", "[stable, beta, beta]")},
            ["channels.yaml:2:11: channels: channel 'beta' is listed twice"],
            id="a channel listed twice",
        ),
        pytest.param(
            {"channels_yaml": CHANNELS.replace("[stable, beta, alpha]", "[Stable]")},
            [
                "channels.yaml:2:11: channels: channel name 'Stable': use lower-case letters, "
                "digits, '.', '_' and '-' (e.g. stable, beta, nightly)"
            ],
            id="a channel name that is not allowed",
        ),
        pytest.param(
            {"channels_yaml": CHANNELS + "promote: []\n"},
            ["channels.yaml:7:1: promote: unknown key 'promote' (allowed: channels, releases)"],
            id="unknown key in channels.yaml",
        ),
    ],
)
def test_channel_mistakes_name_file_line_and_key(
    make_repo: RepoMaker, overrides: dict[str, str], expected: list[str]
) -> None:
    """Each mistake is one problem with file, line, column, key path and the allowed values."""
    assert _problems(_repo(make_repo, **overrides)) == expected


def test_a_broken_channels_yaml_causes_no_follow_on_errors(make_repo: RepoMaker) -> None:
    """A bad channel list is one problem; groups following its channels are not blamed."""
    channels = CHANNELS.replace("[stable, beta, alpha]", "[stable, Beta, alpha]")
    assert _problems(_repo(make_repo, channels_yaml=channels)) == [
        "channels.yaml:2:11: channels: channel name 'Beta': use lower-case letters, digits, "
        "'.', '_' and '-' (e.g. stable, beta, nightly)"
    ]


def test_channels_schema_is_printed() -> None:
    """`engine schema --kind channels` describes channels.yaml."""
    schema = schema_for("channels")
    assert set(schema["properties"]) == {"channels", "releases"}
    assert schema["additionalProperties"] is False


_CHANNEL_ORDER = ("stable", "beta", "alpha")


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.tuples(st.integers(0, 3), st.integers(0, 3), st.sampled_from(["", "-beta.1", "-rc.2"])),
        st.sampled_from([*_CHANNEL_ORDER, None]),
        max_size=12,
    )
)
def test_resolution_is_the_newest_eligible_and_less_stable_never_resolves_older(
    drawn: dict[tuple[int, int, str], str | None],
) -> None:
    """For any catalogue: a channel resolves to the newest release on it or a more stable
    channel, and a less stable channel never resolves to an older release."""
    versions = {V(f"3.{a}.{b}{pre}"): ch for (a, b, pre), ch in drawn.items()}
    channels = Channels(of={v: ch for v, ch in versions.items() if ch is not None})
    previous: Version | None = None
    for rank, channel in enumerate(_CHANNEL_ORDER):
        eligible = [
            v for v, ch in versions.items() if ch is not None and _CHANNEL_ORDER.index(ch) <= rank
        ]
        found = channels.resolve(channel, versions)
        if not eligible:
            assert found is None
            continue
        assert found is not None and found.release == max(eligible)
        assert channels.rank(found.on) <= rank
        if previous is not None:
            assert found.release >= previous
        previous = found.release
