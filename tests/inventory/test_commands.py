"""`engine validate` and `engine schema`: exit codes, output format, schema usefulness."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import main
from inventory.schema import schema_for
from tests.inventory.conftest import DEVICES, GROUPS, RepoMaker

ROOT = Path(__file__).resolve().parents[2]


def test_validate_ok_prints_summary(
    make_repo: RepoMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    """A valid repo exits 0 with a one-line summary on stdout."""
    root = make_repo()
    assert main(["validate", "-C", str(root)]) == 0
    out, err = capsys.readouterr()
    assert out == "ok: 3 devices, 3 groups, 2 releases from 4 files\n"
    assert err == ""


def test_validate_errors_exit_1_with_relative_paths(
    make_repo: RepoMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    """Problems go to stderr as file:line:col: key.path: message, paths relative to the repo."""
    root = make_repo(
        {
            "inventory/devices.yaml": DEVICES.replace("platform: macos", "platform: bsd"),
            "inventory/groups.yaml": GROUPS.replace("priority: 100", "priorty: 100"),
        }
    )
    assert main(["validate", "-C", str(root)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        "inventory/devices.yaml:12:15: devices.munich-mac-0003.platform: found 'bsd'; "
        "allowed: windows | linux | macos",
        "inventory/groups.yaml:4:5: groups.canary.priorty: unknown key 'priorty'; did you mean "
        "'priority'? (allowed: match, members, priority, agent, runtime, rollout, "
        "maintenance_window, description, ssh, vars, flags)",
        "2 problems found",
    ]


def test_validate_as_a_process(make_repo: RepoMaker) -> None:
    """The real `engine validate` process exits 0 on a good repo and 1 on a broken one."""
    root = make_repo()
    command = [sys.executable, "-m", "engine", "validate", "-C", str(root)]
    good = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert good.returncode == 0, good.stderr
    assert good.stdout == "ok: 3 devices, 3 groups, 2 releases from 4 files\n"
    (root / "inventory" / "broken.yaml").write_text("devices: [\n")
    bad = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 1
    assert bad.stdout == ""
    assert bad.stderr.splitlines() == [
        "inventory/broken.yaml:2:1: YAML: did not find expected node content "
        "(while parsing a flow node)",
        "1 problem found",
    ]  # and not rapidyaml's own error print


def test_engine_main_dispatches_validate_and_schema(
    make_repo: RepoMaker, capsys: pytest.CaptureFixture[str]
) -> None:
    """engine.cli.main runs both commands with their exit codes."""
    root = make_repo({"inventory/groups.yaml": GROUPS.replace("'3.0.2'", "'9.9'")})
    assert main(["validate", "-C", str(root)]) == 1
    assert "release 9.9 is not in releases/" in capsys.readouterr().err
    assert main(["schema", "--kind", "release"]) == 0
    assert "platforms" in json.loads(capsys.readouterr().out)["properties"]


@pytest.mark.parametrize("kind", ["inventory", "release", "engine"])
def test_schema_is_json(kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`engine schema --kind K` prints one JSON Schema document."""
    assert main(["schema", "--kind", kind]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["$schema"].startswith("https://json-schema.org/")
    assert document["type"] == "object"
    assert document["additionalProperties"] is False


def test_default_schema_describes_inventory(capsys: pytest.CaptureFixture[str]) -> None:
    """The default schema lists devices and groups with platforms and forbids unknown keys."""
    assert main(["schema"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert set(document["properties"]) == {"devices", "groups"}
    defs = document["$defs"]
    assert defs["Device"]["additionalProperties"] is False
    assert defs["Platform"]["enum"] == ["windows", "linux", "macos"]
    assert defs["Device"]["properties"]["pin"]["anyOf"][0]["type"] == "string"
    assert "pattern" in json.dumps(defs["RolloutPolicy"]["properties"]["soak"])


def test_schema_accepts_a_good_file_and_rejects_a_typo() -> None:
    """A hand-rolled check: keys of a good inventory are in the schema, a typo is not."""
    document = schema_for("inventory")
    device_keys = set(document["$defs"]["Device"]["properties"])
    group_keys = set(document["$defs"]["Group"]["properties"])
    assert {"platform", "site", "tags", "labels", "pin", "ssh", "vars", "flags"} == device_keys
    assert {"match", "members", "priority", "agent", "rollout", "maintenance_window"} <= group_keys
    assert "platfrom" not in device_keys
