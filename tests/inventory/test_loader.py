"""Loading a valid operator repo: models, releases, assignment, digest and templates."""

from __future__ import annotations

import hashlib
import shutil
from datetime import timedelta
from pathlib import Path

import pytest

from fleetbase.platform import Platform
from fleetbase.version import Version
from inventory.catalog import load_release
from inventory.loader import load_operator_repo
from tests.inventory.conftest import RepoMaker, manifest_text

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fleet"


def test_loads_base_repo(make_repo: RepoMaker) -> None:
    """Devices, groups, releases, assignment and file list come back validated."""
    root = make_repo({"engine.yaml": "stale_after: 2d\nserver_url: http://127.0.0.1:8080\n"})
    repo = load_operator_repo(root)
    assert sorted(repo.inventory.devices) == [
        "berlin-pos-0001",
        "hamburg-srv-0002",
        "munich-mac-0003",
    ]
    assert repo.inventory.devices["berlin-pos-0001"].platform is Platform.WINDOWS
    assert repo.inventory.devices["hamburg-srv-0002"].pin == Version("3.0.1")
    assert sorted(repo.inventory.groups) == ["canary", "everyone", "linux-prod"]
    assert repo.settings.stale_after == timedelta(days=2)
    assert repo.assignment == {
        "berlin-pos-0001": "canary",
        "hamburg-srv-0002": "linux-prod",
        "munich-mac-0003": "linux-prod",
    }
    assert sorted(repo.releases) == [Version("3.0.1"), Version("3.0.2")]
    release = repo.releases[Version("3.0.2")]
    assert release.path == root / "releases" / "3.0.2.yaml"
    assert release.sha256 == hashlib.sha256(release.path.read_bytes()).hexdigest()
    assert release.signature_path is None
    assert [p.as_posix() for p in repo.files] == [
        "engine.yaml",
        "inventory/devices.yaml",
        "inventory/groups.yaml",
        "releases/3.0.1.yaml",
        "releases/3.0.2.yaml",
    ]


def test_signature_beside_manifest_is_found(make_repo: RepoMaker) -> None:
    """A detached <file>.sig next to a manifest is reported as its signature path."""
    root = make_repo({"releases/3.0.2.yaml.sig": "signature"})
    repo = load_operator_repo(root)
    assert repo.releases[Version("3.0.2")].signature_path == root / "releases/3.0.2.yaml.sig"
    assert repo.releases[Version("3.0.1")].signature_path is None


def test_digest_is_stable_across_places_and_changes_with_content(
    make_repo: RepoMaker, tmp_path: Path
) -> None:
    """The digest depends on relative paths and bytes only, not on where the repo lives."""
    root = make_repo()
    first = load_operator_repo(root).digest
    copy = tmp_path / "elsewhere" / "fleet"
    shutil.copytree(root, copy)
    assert load_operator_repo(copy).digest == first
    (copy / "inventory" / "groups.yaml").write_text(
        (copy / "inventory" / "groups.yaml").read_text() + "# a comment\n"
    )
    assert load_operator_repo(copy).digest != first
    (copy / "inventory" / "groups.yaml").rename(copy / "inventory" / "zgroups.yaml")
    assert load_operator_repo(copy).digest not in (first,)


def test_signature_files_do_not_change_the_digest(make_repo: RepoMaker) -> None:
    """Re-signing a release does not make saved plans stale."""
    root = make_repo()
    before = load_operator_repo(root).digest
    (root / "releases" / "3.0.2.yaml.sig").write_text("sig")
    assert load_operator_repo(root).digest == before


def test_templates_are_rendered_with_includes(make_repo: RepoMaker) -> None:
    """A .yaml.j2 file is rendered with Jinja2 (loops, macros from helper files) before parsing."""
    root = make_repo(
        {
            "inventory/_sites.j2": "{% set sites = ['berlin', 'paris'] %}",
            "inventory/pos.yaml.j2": (
                "{% import '_sites.j2' as s %}\n"
                "devices:\n"
                "{% for site in s.sites %}{% for i in range(2) %}\n"
                "  {{ site }}-pos-{{ '%02d' % i }}:\n"
                "    platform: windows\n"
                "    site: {{ site }}\n"
                "{% endfor %}{% endfor %}\n"
            ),
        }
    )
    repo = load_operator_repo(root)
    assert {d for d in repo.inventory.devices if d.endswith(("-00", "-01"))} == {
        "berlin-pos-00",
        "berlin-pos-01",
        "paris-pos-00",
        "paris-pos-01",
    }
    assert Path("inventory/_sites.j2") in repo.files
    before = repo.digest
    (root / "inventory" / "_sites.j2").write_text("{% set sites = ['berlin'] %}")
    again = load_operator_repo(root)
    assert "paris-pos-00" not in again.inventory.devices
    assert again.digest != before


def test_empty_sections_and_empty_files_are_allowed(make_repo: RepoMaker) -> None:
    """`devices:` with nothing under it, or an empty file, is an empty inventory part."""
    root = make_repo({"inventory/empty.yaml": "", "inventory/none.yaml": "devices:\ngroups:\n"})
    repo = load_operator_repo(root)
    assert len(repo.inventory.devices) == 3


def test_unmanaged_devices_are_not_an_error(make_repo: RepoMaker) -> None:
    """Devices no group with an agent covers are simply absent from the assignment."""
    root = make_repo({"inventory/more.yaml": "devices:\n  loner:\n    platform: macos\n"})
    repo = load_operator_repo(root)
    assert "loner" in repo.inventory.devices
    assert "loner" not in repo.assignment


def test_fallback_reader_gives_the_same_repo(
    make_repo: RepoMaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without rapidyaml, PyYAML loads the same repo with the same digest."""
    from inventory import _yaml

    root = make_repo()
    fast = load_operator_repo(root)
    monkeypatch.setattr(_yaml, "_HAVE_RYML", False)
    slow = load_operator_repo(root)
    assert slow.inventory == fast.inventory
    assert slow.assignment == fast.assignment
    assert slow.digest == fast.digest
    assert {v: r.manifest for v, r in slow.releases.items()} == {
        v: r.manifest for v, r in fast.releases.items()
    }


def test_load_release_checks_one_file(tmp_path: Path) -> None:
    """load_release validates a single manifest, including its file name."""
    path = tmp_path / "releases" / "3.1.0-rc1.yaml"
    path.parent.mkdir()
    path.write_text(manifest_text("3.1.0-rc1", 9))
    loaded = load_release(path)
    assert loaded.manifest.version == Version("3.1.0-rc1")
    assert loaded.manifest.version.is_prerelease


def test_example_fleet_loads() -> None:
    """The repository's example operator repo is valid."""
    if not EXAMPLE.is_dir():
        pytest.skip("examples/fleet not present in this checkout")
    repo = load_operator_repo(EXAMPLE)
    assert repo.inventory.devices and repo.releases and repo.assignment


@pytest.mark.parametrize(
    ("lower", "higher"),
    [
        ("3.0.9", "3.0.10"),
        ("3.0.0-rc1", "3.0.0"),
        ("3.0.0-rc.2", "3.0.0-rc.10"),
        ("3.0.0-alpha", "3.0.0-beta"),
        ("3.0.0-1", "3.0.0-alpha"),
        ("2.9.99", "3"),
        ("v1.2", "1.3"),
    ],
)
def test_version_order(lower: str, higher: str) -> None:
    """Versions compare numerically; pre-releases sort below the release; numbers below names."""
    assert Version(lower) < Version(higher)
    assert sorted([Version(higher), Version(lower)]) == [Version(lower), Version(higher)]


def test_version_equality_ignores_trailing_zeros_and_build() -> None:
    """3.0 == 3.0.0 and build metadata does not change ordering."""
    assert Version("3.0") == Version("3.0.0")
    assert Version("3.0.1+build.7") == Version("3.0.1")
    assert len({Version("3.0"), Version("3.0.0")}) == 1


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("10m", 600), ("3h", 10800), ("1d", 86400), ("1h30m", 5400), ("250ms", 0.25)],
)
def test_durations(text: str, seconds: float) -> None:
    """Durations read as operators write them."""
    from fleetbase.duration import format_duration, parse_duration

    assert parse_duration(text) == timedelta(seconds=seconds)
    assert parse_duration(format_duration(parse_duration(text))) == parse_duration(text)
