"""Every kind of operator mistake is reported with its file, line, column, key path and advice."""

from __future__ import annotations

from pathlib import Path

import pytest

from inventory.errors import InventoryError
from inventory.loader import load_operator_repo
from tests.inventory.conftest import DEVICES, GROUPS, SHA, RepoMaker, manifest_text


def _file(entry: str) -> str:
    return f"      - {entry}\n"


#: (case id, files to write over the valid base repo, every expected problem line)
CASES: list[tuple[str, dict[str, str | None], list[str]]] = [
    (
        "unknown key with suggestion",
        {"inventory/devices.yaml": DEVICES + "    platfrom: linux\n"},
        [
            "inventory/devices.yaml:14:5: devices.munich-mac-0003.platfrom: unknown key "
            "'platfrom'; did you mean 'platform'? (allowed: platform, site, tags, labels, pin, "
            "ssh, vars, flags)"
        ],
    ),
    (
        "unknown top-level key",
        {"inventory/extra.yaml": "devices: {}\ngroup: {}\n"},
        [
            "inventory/extra.yaml:2:1: group: unknown key 'group'; did you mean 'groups'? "
            "(allowed: devices, groups)"
        ],
    ),
    (
        "enum names the allowed values",
        {"inventory/devices.yaml": DEVICES.replace("platform: macos", "platform: macOS")},
        [
            "inventory/devices.yaml:12:15: devices.munich-mac-0003.platform: found 'macOS'; "
            "allowed: windows | linux | macos; did you mean 'macos'?"
        ],
    ),
    (
        "enum inside a list-or-value selector",
        {"inventory/groups.yaml": GROUPS.replace("[windows, linux, macos]", "[windows, lnux]")},
        [
            "inventory/groups.yaml:11:33: groups.everyone.match.platform[1]: found 'lnux'; "
            "allowed: windows | linux | macos; did you mean 'linux'?"
        ],
    ),
    (
        "wrong type",
        {"inventory/groups.yaml": GROUPS.replace("priority: 100", "priority: high")},
        ["inventory/groups.yaml:4:15: groups.canary.priority: expected an integer, found 'high'"],
    ),
    (
        "string or list",
        {"inventory/groups.yaml": GROUPS.replace("{tags: internal}", "{tags: 5}")},
        [
            "inventory/groups.yaml:3:19: groups.canary.match.tags: "
            "expected a string or a list, found 5"
        ],
    ),
    (
        "version written as a number",
        {"inventory/devices.yaml": DEVICES.replace("pin: '3.0.1'", "pin: 3.10")},
        [
            "inventory/devices.yaml:10:10: devices.hamburg-srv-0002.pin: found the number 3.10 "
            "(YAML reads it as 3.1), not a version; quote it: '3.10'"
        ],
    ),
    (
        "required key missing",
        {"inventory/more.yaml": "devices:\n  lonely:\n    site: berlin\n"},
        ["inventory/more.yaml:3:5: devices.lonely.platform: required key 'platform' is missing"],
    ),
    (
        "device defined in two files",
        {"inventory/more.yaml": "devices:\n  munich-mac-0003:\n    platform: macos\n"},
        [
            "inventory/more.yaml:2:3: devices.munich-mac-0003: device 'munich-mac-0003' is "
            "defined twice: also at inventory/devices.yaml:11"
        ],
    ),
    (
        "group defined in two files",
        {"inventory/more.yaml": "groups:\n  canary:\n    match: {site: paris}\n"},
        [
            "inventory/more.yaml:2:3: groups.canary: group 'canary' is defined twice: "
            "also at inventory/groups.yaml:2"
        ],
    ),
    (
        "duplicate key inside one mapping",
        {"inventory/more.yaml": "devices:\n  a:\n    platform: linux\n  a:\n    platform: macos\n"},
        [
            "inventory/more.yaml:4:3: devices.a: duplicate key 'a': first defined at line 2, "
            "column 3; YAML would silently keep only the last one"
        ],
    ),
    (
        "duplicate key nested deep",
        {"inventory/more.yaml": "devices:\n  a:\n    platform: linux\n    site: x\n    site: y\n"},
        [
            "inventory/more.yaml:5:5: devices.a.site: duplicate key 'site': first defined at "
            "line 4, column 5; YAML would silently keep only the last one"
        ],
    ),
    (
        "member that is not a device",
        {"inventory/groups.yaml": GROUPS.replace("[munich-mac-0003]", "[munich-mac-003]")},
        [
            "inventory/groups.yaml:8:15: groups.linux-prod.members[0]: 'munich-mac-003' is not "
            "a device; did you mean 'munich-mac-0003'?"
        ],
    ),
    (
        "group release not in releases",
        {"inventory/groups.yaml": GROUPS.replace("release: '3.0.1'", "release: '3.0.9'")},
        [
            "inventory/groups.yaml:9:22: groups.linux-prod.agent.release: release 3.0.9 is not "
            "in releases/ (known: 3.0.1, 3.0.2)"
        ],
    ),
    (
        "pin to unknown version",
        {"inventory/devices.yaml": DEVICES.replace("pin: '3.0.1'", "pin: '2.9'")},
        [
            "inventory/devices.yaml:10:10: devices.hamburg-srv-0002.pin: pin 2.9 names no "
            "release in releases/ (known: 3.0.1, 3.0.2)"
        ],
    ),
    (
        "invalid cron",
        {
            "inventory/more.yaml": "groups:\n  night:\n    match: {site: paris}\n"
            "    maintenance_window: {cron: '0 25 * * *', duration: 3h}\n"
        },
        [
            "inventory/more.yaml:4:32: groups.night.maintenance_window.cron: '0 25 * * *': "
            "the hour field '25' is not valid; hour takes 0-23, with lists (1,3), ranges (1-5) "
            "and steps (*/15)"
        ],
    ),
    (
        "cron with a misspelt day",
        {
            "inventory/more.yaml": "groups:\n  night:\n    match: {site: paris}\n"
            "    maintenance_window: {cron: '0 3 * * Mon-Fry', duration: 3h}\n"
        },
        [
            "inventory/more.yaml:4:32: groups.night.maintenance_window.cron: '0 3 * * Mon-Fry': "
            "the day-of-week field 'Mon-Fry' is not valid; day-of-week takes 0-7 or sun-sat "
            "(0 and 7 are Sunday), with lists (1,3), ranges (1-5) and steps (*/15)"
        ],
    ),
    (
        "cron with four fields",
        {
            "inventory/more.yaml": "groups:\n  night:\n    match: {site: paris}\n"
            "    maintenance_window: {cron: '0 2 * *', duration: 3h}\n"
        },
        [
            "inventory/more.yaml:4:32: groups.night.maintenance_window.cron: '0 2 * *' is not a "
            "cron expression: expected five fields 'minute hour day-of-month month day-of-week', "
            "found 4, e.g. '0 2 * * *'"
        ],
    ),
    (
        "invalid time zone",
        {
            "inventory/more.yaml": "groups:\n  night:\n    match: {site: paris}\n"
            "    maintenance_window:\n      cron: '0 2 * * *'\n      duration: 3h\n"
            "      timezone: Europe/Berlni\n"
        },
        [
            "inventory/more.yaml:7:17: groups.night.maintenance_window.timezone: "
            "'Europe/Berlni' is not a known IANA time zone (e.g. UTC, Europe/Berlin)"
        ],
    ),
    (
        "waves not increasing",
        {
            "inventory/more.yaml": "groups:\n  g:\n    match: {site: x}\n    rollout:\n"
            "      waves: [10, 10, 100]\n"
        },
        [
            "inventory/more.yaml:5:14: groups.g.rollout.waves: waves must be strictly "
            "increasing cumulative percentages; 10 follows 10"
        ],
    ),
    (
        "waves not ending at 100",
        {
            "inventory/more.yaml": "groups:\n  g:\n    match: {site: x}\n"
            "    rollout: {waves: [5, 50]}\n"
        },
        [
            "inventory/more.yaml:4:22: groups.g.rollout.waves: the last wave must be 100 "
            "(the whole group), found 50"
        ],
    ),
    (
        "bad duration",
        {
            "inventory/more.yaml": "groups:\n  g:\n    match: {site: x}\n"
            "    rollout: {soak: 10 minutes}\n"
        },
        [
            "inventory/more.yaml:4:21: groups.g.rollout.soak: '10 minutes' is not a duration: "
            "use a number with a unit ms, s, m, h, d or w (e.g. 30s, 10m, 1h30m)"
        ],
    ),
    (
        "yaml syntax error",
        {"inventory/more.yaml": "devices:\n  a: {platform: linux\n  b: 1\n"},
        [
            "inventory/more.yaml:3:4: YAML: did not find expected ',' or '}' "
            "(while parsing a flow mapping)"
        ],
    ),
    (
        "two documents in one file",
        {"inventory/more.yaml": "devices: {}\n---\ngroups: {}\n"},
        [
            "inventory/more.yaml:2:1: YAML: but found another document "
            "(expected a single document in the stream)"
        ],
    ),
    (
        "a list instead of a mapping",
        {"inventory/more.yaml": "- a\n- b\n"},
        [
            "inventory/more.yaml:1:1: expected a mapping with 'devices' and/or 'groups', "
            "found a list"
        ],
    ),
    (
        "undefined template variable",
        {
            "inventory/gen.yaml.j2": "devices:\n{% for i in range(2) %}\n  d{{ i }}:\n"
            "    platform: {{ plat }}\n{% endfor %}\n"
        },
        ["inventory/gen.yaml.j2:4: Jinja2: 'plat' is undefined"],
    ),
    (
        "template syntax error",
        {
            "inventory/gen.yaml.j2": "devices:\n{% for i in range(2) %}\n"
            "  d{{ i }}: {platform: linux}\n"
        },
        [
            "inventory/gen.yaml.j2:3: Jinja2: Unexpected end of template. Jinja was looking "
            "for the following tags: 'endfor' or 'else'. The innermost block that needs to be "
            "closed is 'for'."
        ],
    ),
    (
        "engine settings",
        {"engine.yaml": "stale_after: 3x\nserver: http://127.0.0.1:8080\n"},
        [
            "engine.yaml:1:14: stale_after: '3x' is not a duration: use a number with a unit "
            "ms, s, m, h, d or w (e.g. 30s, 10m, 1h30m)",
            "engine.yaml:2:1: server: unknown key 'server'; did you mean 'server_url'? "
            "(allowed: state, server_url, signing_key, trusted_keys, stale_after, "
            "poll_interval, field_release, server_limits, runtime_bundles, nats, secrets_file)",
        ],
    ),
    (
        "field release that is no release",
        {"engine.yaml": "stale_after: 3d\nfield_release: '3.9.0'\n"},
        [
            "engine.yaml:2:16: field_release: field_release 3.9.0 is not in releases/ "
            "(known: 3.0.1, 3.0.2)"
        ],
    ),
    (
        "overlapping groups that disagree",
        {
            "inventory/more.yaml": "groups:\n  hamburg:\n    match: {site: hamburg}\n"
            "    agent: {release: '3.0.2'}\n"
        },
        [
            "inventory/more.yaml:2:3: groups.hamburg: groups 'hamburg' "
            "(inventory/more.yaml:2) and 'linux-prod' (inventory/groups.yaml:6) both have "
            "priority 0 and both match device 'hamburg-srv-0002', but disagree on release "
            "3.0.2 vs 3.0.1: give one a higher priority"
        ],
    ),
    # release manifests
    (
        "manifest path with ..",
        {
            "releases/3.0.2.yaml": manifest_text(
                "3.0.2", 2, files=_file(f"{{path: ../x, sha256: '{SHA}', size: 1, source: x}}")
            )
        },
        [
            "releases/3.0.2.yaml:7:16: platforms.linux.files[0].path: path '../x' must not "
            "contain '..', '.' or empty components"
        ],
    ),
    (
        "manifest absolute path",
        {
            "releases/3.0.2.yaml": manifest_text(
                "3.0.2", 2, files=_file(f"{{path: /etc/x, sha256: '{SHA}', size: 1, source: x}}")
            )
        },
        [
            "releases/3.0.2.yaml:7:16: platforms.linux.files[0].path: path '/etc/x' must be "
            "relative to the agent root, not absolute"
        ],
    ),
    (
        "manifest drive path",
        {
            "releases/3.0.2.yaml": manifest_text(
                "3.0.2", 2, files=_file(f"{{path: 'C:/x', sha256: '{SHA}', size: 1, source: x}}")
            )
        },
        [
            "releases/3.0.2.yaml:7:16: platforms.linux.files[0].path: path 'C:/x' must be "
            "relative to the agent root, not absolute"
        ],
    ),
    (
        "manifest bad sha256",
        {
            "releases/3.0.2.yaml": manifest_text(
                "3.0.2", 2, files=_file("{path: a, sha256: ABC, size: 1, source: x}")
            )
        },
        [
            "releases/3.0.2.yaml:7:27: platforms.linux.files[0].sha256: sha256 must be 64 "
            "lowercase hexadecimal characters"
        ],
    ),
    (
        "malformed requirement",
        {
            "releases/3.0.2.yaml": manifest_text(
                "3.0.2", 2, extra="requires:\n  runtime: '>=>0.2'\n"
            )
        },
        [
            "releases/3.0.2.yaml:9:12: requires.runtime: '>=>0.2' is not a version requirement: "
            "expected comma-separated clauses of an operator (>=, <=, >, <, ==, !=, ~=) and a "
            "version, e.g. '>=0.2.0' or '>=3.11,<3.14'"
        ],
    ),
    (
        "requirement that YAML reads as a number",
        {"releases/3.0.2.yaml": manifest_text("3.0.2", 2, extra="requires:\n  python: 3.11\n")},
        [
            "releases/3.0.2.yaml:9:11: requires.python: YAML read 3.11 as a number, not a "
            "requirement; write it in quotes with an operator, e.g. '>=3.11'"
        ],
    ),
    (
        "requirement for an unknown platform",
        {"releases/3.0.2.yaml": manifest_text("3.0.2", 2, extra="requires:\n  os: {bsd: '>=1'}\n")},
        [
            "releases/3.0.2.yaml:9:13: requires.os.bsd: found 'bsd'; allowed: 'windows', "
            "'linux' or 'macos'"
        ],
    ),
    (
        "misspelt requirement",
        {"releases/3.0.2.yaml": manifest_text("3.0.2", 2, extra="requires:\n  runtme: '>=1'\n")},
        [
            "releases/3.0.2.yaml:9:3: requires.runtme: unknown key 'runtme'; did you mean "
            "'runtime'? (allowed: runtime, python, os, components)"
        ],
    ),
    (
        "manifest duplicate file path",
        {
            "releases/3.0.2.yaml": manifest_text(
                "3.0.2",
                2,
                files=_file(f"{{path: a.py, sha256: '{SHA}', size: 1, source: x}}")
                + _file(f"{{path: A.py, sha256: '{SHA}', size: 1, source: x}}"),
            )
        },
        [
            "releases/3.0.2.yaml:7:7: platforms.linux.files: file 'A.py' is listed twice "
            "('a.py' is the same file on Windows or macOS: equal up to case or Unicode "
            "normalisation)"
        ],
    ),
    (
        "manifest version not matching its file name",
        {"releases/3.0.2.yaml": manifest_text("3.0.3", 2)},
        [
            "releases/3.0.2.yaml:1:10: version: version 3.0.3 does not match the file name "
            "'3.0.2.yaml'; rename it to 3.0.3.yaml"
        ],
    ),
    (
        "manifest serial reused",
        {"releases/3.0.2.yaml": manifest_text("3.0.2", 1)},
        [
            "releases/3.0.2.yaml:2:9: serial: serial 1 is also used by releases/3.0.1.yaml:2; "
            "every release needs its own, higher serial"
        ],
    ),
    (
        "manifest version released twice",
        {
            "releases/3.0.yaml": manifest_text("3.0", 5),
            "releases/3.0.0.yaml": manifest_text("3.0.0", 6),
        },
        ["releases/3.0.yaml:1:10: version: version 3.0 is also released by releases/3.0.0.yaml:1"],
    ),
    (
        "manifest version as a number",
        {"releases/3.10.yaml": manifest_text("3.10", 7).replace("'3.10'", "3.10")},
        [
            "releases/3.10.yaml:1:10: version: found the number 3.10 (YAML reads it as 3.1), "
            "not a version; quote it: '3.10'"
        ],
    ),
    (
        "manifest unknown key",
        {"releases/3.0.2.yaml": manifest_text("3.0.2", 2, extra="rollback: ['3.0.1']\n")},
        [
            "releases/3.0.2.yaml:8:1: rollback: unknown key 'rollback'; did you mean "
            "'rollback_to'? (allowed: kind, version, serial, expires, platforms, health_check, "
            "rollback_to, notes, requires, config, flags)"
        ],
    ),
]


@pytest.mark.parametrize(("files", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_problem_is_reported_precisely(
    make_repo: RepoMaker, files: dict[str, str | None], expected: list[str]
) -> None:
    """Each mistake yields exactly the expected file:line:col: key.path: message lines."""
    root = make_repo(files)
    before = sorted((p, p.read_bytes()) for p in root.rglob("*") if p.is_file())
    with pytest.raises(InventoryError) as info:
        load_operator_repo(root)
    assert [str(p) for p in info.value.problems] == expected
    assert str(info.value) == "\n".join(expected)
    after = sorted((p, p.read_bytes()) for p in root.rglob("*") if p.is_file())
    assert after == before  # loading never writes into the operator repo


def test_all_problems_are_reported_not_only_the_first(make_repo: RepoMaker) -> None:
    """Mistakes in several files are collected into one error."""
    root = make_repo(
        {
            "inventory/devices.yaml": DEVICES.replace("platform: macos", "platform: mac"),
            "inventory/groups.yaml": GROUPS.replace("priority: 100", "priority: x"),
            "releases/3.0.2.yaml": manifest_text("3.0.2", 1),
        }
    )
    with pytest.raises(InventoryError) as info:
        load_operator_repo(root)
    files = [p.file.as_posix() for p in info.value.problems]
    assert files == ["inventory/devices.yaml", "inventory/groups.yaml", "releases/3.0.2.yaml"]


def test_broken_file_causes_no_follow_on_errors(make_repo: RepoMaker) -> None:
    """Devices of a broken file and releases of a broken manifest are not reported missing."""
    root = make_repo(
        {
            "inventory/devices.yaml": DEVICES + "    platfrom: linux\n",
            "releases/3.0.2.yaml": manifest_text("3.0.2", 2, extra="bogus: 1\n"),
        }
    )
    with pytest.raises(InventoryError) as info:
        load_operator_repo(root)
    messages = [p.message for p in info.value.problems]
    assert len(messages) == 2
    assert not any("not a device" in m or "not in releases" in m for m in messages)


def test_missing_inventory_dir_is_a_clear_error(make_repo: RepoMaker) -> None:
    """A repo without inventory/ names the directory and what it should hold."""
    root = make_repo({"inventory/devices.yaml": None, "inventory/groups.yaml": None})
    assert not (root / "inventory").exists()
    with pytest.raises(InventoryError) as info:
        load_operator_repo(root)
    assert [str(p) for p in info.value.problems] == [
        "inventory: missing: the operator repo needs an inventory/ directory with devices "
        "and groups in *.yaml or *.yaml.j2 files"
    ]


def test_empty_inventory_dir_is_a_clear_error(make_repo: RepoMaker) -> None:
    """An inventory/ without YAML files is refused, naming the accepted file names."""
    root = make_repo(
        {"inventory/devices.yaml": None, "inventory/groups.yaml": None, "inventory/notes.txt": "x"}
    )
    with pytest.raises(InventoryError) as info:
        load_operator_repo(root)
    assert [str(p) for p in info.value.problems] == [
        "inventory: holds no *.yaml or *.yaml.j2 files: declare devices and groups there"
    ]


def test_not_a_directory(tmp_path: Path) -> None:
    """Pointing at a missing directory is one problem naming it."""
    with pytest.raises(InventoryError) as info:
        load_operator_repo(tmp_path / "nope")
    assert info.value.problems[0].message == "is not a directory"
