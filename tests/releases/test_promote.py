"""`engine release promote VERSION CHANNEL`: a one-line change to channels.yaml, reviewed in git."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from engine.cli import main
from engine.service.promote import PromoteError, set_release_channel
from fleetbase.version import Version
from inventory.loader import load_operator_repo
from tests.rollouts.fleet import linux_devices, write_repo

CHANNELS = """\
# Channels of the fleet; promote with `engine release promote`.
channels: [stable, beta, alpha]

releases:
  # the first managed release
  "3.0.0": stable
  "3.0.1": beta    # good on the canaries

# end of file
"""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """Releases 3.0.0 (stable), 3.0.1 (beta), 3.0.2 (no channel); groups on stable and beta."""
    groups: dict[str, dict[str, Any]] = {
        "early": {"members": ["srv-0000"], "priority": 1, "agent": {"channel": "beta"}},
        "prod": {"match": {"platform": "linux"}, "agent": {"channel": "stable"}},
    }
    root = write_repo(tmp_path / "repo", linux_devices("srv", 3), groups)
    (root / "channels.yaml").write_text(CHANNELS)
    return root


def _channels(root: Path) -> str:
    return (root / "channels.yaml").read_text()


def test_promote_edits_one_line_in_place_and_prints_the_diff(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """3.0.1 beta -> stable changes only its value; comments stay; prod moves; no commit."""
    assert main(["release", "promote", "3.0.1", "stable", "-C", str(repo)]) == 0
    assert _channels(repo) == CHANNELS.replace('"3.0.1": beta ', '"3.0.1": stable ')
    out = capsys.readouterr().out
    assert out.startswith("release 3.0.1: from beta to stable (channels.yaml)\n")
    assert '-  "3.0.1": beta    # good on the canaries\n' in out
    assert '+  "3.0.1": stable    # good on the canaries\n' in out
    assert "  prod (channel stable): 3.0.0 -> 3.0.1\n" in out
    assert "git add channels.yaml && git commit" in out
    assert not (repo / ".git").exists()
    prod = load_operator_repo(repo).inventory.groups["prod"].agent
    assert prod is not None and prod.release == Version("3.0.1")


def test_promote_a_release_without_channel_adds_a_line(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """3.0.2 had no channel: a new entry after the last one, the beta group moves to it."""
    assert main(["release", "promote", "3.0.2", "beta", "-C", str(repo), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["previous"] is None and doc["changed"] is True
    assert doc["moves"] == [{"group": "early", "channel": "beta", "from": "3.0.1", "to": "3.0.2"}]
    assert _channels(repo) == CHANNELS.replace(
        '  "3.0.1": beta    # good on the canaries\n',
        '  "3.0.1": beta    # good on the canaries\n  "3.0.2": beta\n',
    )


def test_promote_creates_channels_yaml_when_missing(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without channels.yaml (and no group on a channel) promote writes one with the order."""
    (repo / "channels.yaml").unlink()
    fleet = repo / "inventory" / "fleet.yaml"
    fleet.write_text(fleet.read_text().replace("channel: beta", "release: 3.0.1"))
    fleet.write_text(fleet.read_text().replace("channel: stable", "release: 3.0.0"))
    assert main(["release", "promote", "3.0.0", "stable", "-C", str(repo)]) == 0
    text = _channels(repo)
    assert text.endswith('channels: [stable, beta, alpha]\nreleases:\n  "3.0.0": stable\n')
    assert "--- /dev/null" in capsys.readouterr().out
    assert load_operator_repo(repo).channels.channel_of(Version("3.0.0")) == "stable"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["9.9.9", "stable"], "release 9.9.9 is not in releases/ (known: 3.0.0, 3.0.1, 3.0.2)"),
        (["3.0.1", "nightly"], "unknown channel 'nightly'; channels are stable, beta, alpha"),
        (["latest", "stable"], "'latest' is not a version"),
        (
            ["3.0.0", "beta"],
            "release 3.0.0 is on stable; moving it to the less stable beta is a demotion "
            "(groups following stable would no longer get it): pass --force",
        ),
    ],
    ids=["unknown release", "unknown channel", "not a version", "demotion"],
)
def test_promote_refuses_and_changes_nothing(
    repo: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    """Refusals exit 1 with one line on stderr and leave channels.yaml as it was."""
    assert main(["release", "promote", *args, "-C", str(repo)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("engine release promote: ") and message in err
    assert _channels(repo) == CHANNELS


def test_demotion_with_force(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--force demotes 3.0.1 to alpha: the beta group goes back to 3.0.0 (shown)."""
    assert main(["release", "promote", "3.0.1", "alpha", "-C", str(repo), "--force"]) == 0
    assert "  early (channel beta): 3.0.1 -> 3.0.0\n" in capsys.readouterr().out
    assert '"3.0.1": alpha    # good on the canaries' in _channels(repo)


def test_promote_to_the_same_channel_changes_nothing(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Already there: exit 0, nothing written."""
    assert main(["release", "promote", "3.0.1", "beta", "-C", str(repo)]) == 0
    assert capsys.readouterr().out == "release 3.0.1 is already on beta: nothing to change\n"
    assert _channels(repo) == CHANNELS


def test_promote_that_would_break_the_repo_restores_the_file(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A group following beta without artifacts for its platform: the edit is undone."""
    manifest = repo / "releases" / "3.0.2.yaml"
    text = manifest.read_text()
    # 3.0.2 for windows only: the linux devices following beta could not take it
    start, end = text.index("  linux:\n"), text.index("  macos:\n")
    manifest.write_text(text[:start] + text[end:])
    assert main(["release", "promote", "3.0.2", "beta", "-C", str(repo)]) == 1
    err = capsys.readouterr().err
    assert "putting 3.0.2 on beta would break the operator repo; channels.yaml is unchanged" in err
    assert (
        "groups.early.agent.channel: release 3.0.2 (channel beta) has no artifact for linux"
    ) in err
    assert _channels(repo) == CHANNELS


def test_promote_refuses_a_repo_with_problems(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A broken repo is named, file and line, before anything is edited."""
    (repo / "engine.yaml").write_text("stale_after: soon\n")
    assert main(["release", "promote", "3.0.2", "beta", "-C", str(repo)]) == 1
    assert "engine.yaml:1:14: stale_after" in capsys.readouterr().err
    assert _channels(repo) == CHANNELS


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("", 'releases:\n  "3.1.0": beta\n'),
        ("channels: [stable, beta]", 'channels: [stable, beta]\nreleases:\n  "3.1.0": beta\n'),
        ("releases:\n", 'releases:\n  "3.1.0": beta\n'),
        ("releases: {}\n", 'releases: {"3.1.0": beta}\n'),
        ('releases: {"3.0.0": stable}\n', 'releases: {"3.0.0": stable, "3.1.0": beta}\n'),
        ("releases:\n  3.1.0: 'alpha'  # keep\n", "releases:\n  3.1.0: beta  # keep\n"),
        ("releases:\n    '3.0': stable\n", "releases:\n    '3.0': stable\n    \"3.1.0\": beta\n"),
    ],
    ids=["empty", "no releases key", "empty section", "empty flow", "flow", "quoted", "indent"],
)
def test_set_release_channel_keeps_the_rest_of_the_text(before: str, after: str) -> None:
    """The targeted edit for each way channels.yaml may be written."""
    assert set_release_channel(before, Version("3.1.0"), "beta") == after


def test_set_release_channel_refuses_a_list() -> None:
    """A file that is not a mapping is for the operator to fix."""
    with pytest.raises(PromoteError, match="must be a mapping"):
        set_release_channel("- stable\n", Version("3.1.0"), "beta")


def _build(tmp_path: Path) -> Path:
    build = tmp_path / "build"
    (build / "core").mkdir(parents=True)
    (build / "nats_agent.py").write_text("print('agent')\n")
    (build / "core" / "agent.py").write_text("VERSION = '3.1.0'\n")
    return build


def test_release_new_with_channel_puts_the_new_release_on_it(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`release new 3.1.0 --channel beta`: the manifest, and one line in channels.yaml."""
    build = _build(tmp_path)
    assert main(["release", "new", "3.1.0", "--from", str(build), "-C", str(repo), "--channel",
                 "beta"]) == 0  # fmt: skip
    assert "  channel   beta (channels.yaml" in capsys.readouterr().out
    assert _channels(repo).endswith('  "3.0.1": beta    # good on the canaries\n'
                                    '  "3.1.0": beta\n\n# end of file\n')  # fmt: skip
    early = load_operator_repo(repo).inventory.groups["early"].agent
    assert early is not None and early.release == Version("3.1.0")


def test_release_new_refuses_an_unknown_channel_before_making_anything(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown --channel is refused first: no manifest, no artifacts, channels.yaml as was."""
    build = _build(tmp_path)
    assert main(["release", "new", "3.1.0", "--from", str(build), "-C", str(repo), "--channel",
                 "nightly"]) == 1  # fmt: skip
    assert "unknown channel 'nightly'; channels are stable, beta, alpha" in capsys.readouterr().err
    assert not (repo / "releases" / "3.1.0.yaml").exists()
    assert not (repo / "artifacts" / "3.1.0").exists()
    assert _channels(repo) == CHANNELS
