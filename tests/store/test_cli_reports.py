"""`engine reports import|list` end to end: real files, real stores, stdin."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine.cli import main
from engine.store import ENV_STATE_URL, Store, normalize_url, redact_url

ROOT = Path(__file__).resolve().parents[2]

GOOD: list[dict[str, Any]] = [
    {"device": "berlin-pos-0001", "agent_version": "3.0.1", "platform": "windows",
     "last_seen": "2026-11-27T10:00:00Z", "hostname": "ignored-extra-field"},
    {"device": "hamburg-srv-0002", "agent_version": "3.0.0", "platform": "linux",
     "last_seen": "2026-11-27T11:00:00+01:00", "known_good": "3.0.0"},
    {"device": "munich-mac-0003", "agent_version": None, "platform": "macos",
     "last_seen": "2026-11-26T09:00:00Z"},
]  # fmt: skip


@pytest.fixture(autouse=True)
def _no_env_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_STATE_URL, raising=False)


def _write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data, indent=1))
    return path


def _stored(url: str) -> dict[str, Any]:
    with Store.open(url) as store:
        return {d: r.model_dump(mode="json") for d, r in store.load_reports().items()}


def test_import_good_file(
    tmp_path: Path, store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A valid file is imported; the message names the count, store and new/updated split."""
    path = _write(tmp_path / "reports.json", GOOD)
    assert main(["reports", "import", str(path), "--state", store_url]) == 0
    out = capsys.readouterr().out
    url = redact_url(normalize_url(store_url))
    assert out == f"imported 3 reports into {url} (3 new, 0 updated)\n"
    stored = _stored(store_url)
    assert sorted(stored) == ["berlin-pos-0001", "hamburg-srv-0002", "munich-mac-0003"]
    assert stored["hamburg-srv-0002"]["last_seen"] == "2026-11-27T10:00:00Z"
    assert stored["hamburg-srv-0002"]["known_good"] == "3.0.0"
    assert stored["munich-mac-0003"]["agent_version"] is None

    assert main(["reports", "import", str(path), "--state", store_url]) == 0
    assert "(0 new, 3 updated)" in capsys.readouterr().out


def test_default_store_is_in_repo_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without --state, -C DIR puts the store at DIR/.engine/state.db (creating .engine)."""
    path = _write(tmp_path / "r.json", GOOD[:1])
    repo = tmp_path / "fleet"
    repo.mkdir()
    assert main(["reports", "import", str(path), "-C", str(repo)]) == 0
    db = repo.resolve() / ".engine" / "state.db"
    assert capsys.readouterr().out == f"imported 1 report into sqlite:///{db} (1 new, 0 updated)\n"
    assert list(_stored(f"sqlite:///{db}")) == ["berlin-pos-0001"]


def test_env_and_engine_yaml_choose_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """engine.yaml's state is used, $ENGINE_STATE_URL overrides it, --state overrides both."""
    path = _write(tmp_path / "r.json", GOOD[:1])
    (tmp_path / "engine.yaml").write_text("state: sqlite:///from-yaml.db\n")
    assert main(["reports", "import", str(path), "-C", str(tmp_path)]) == 0
    assert (tmp_path / "from-yaml.db").exists()
    monkeypatch.setenv(ENV_STATE_URL, f"sqlite:///{tmp_path}/from-env.db")
    assert main(["reports", "import", str(path), "-C", str(tmp_path)]) == 0
    assert (tmp_path / "from-env.db").exists()
    flag = f"sqlite:///{tmp_path}/from-flag.db"
    assert main(["reports", "import", str(path), "-C", str(tmp_path), "--state", flag]) == 0
    assert (tmp_path / "from-flag.db").exists()
    out = capsys.readouterr().out
    assert [line.split(" into ")[1].split(" (")[0] for line in out.splitlines()] == [
        f"sqlite:///{tmp_path.resolve()}/from-yaml.db",
        f"sqlite:///{tmp_path}/from-env.db",
        flag,
    ]


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"platform": "bsd"}, "[1].platform: 'bsd' is not one of windows | linux | macos"),
        ({"agent_version": "x.y"}, "[1].agent_version: 'x.y' is not a version"),
        ({"agent_version": 3.1}, "[1].agent_version: 3.1 is a number, not a version; write"),
        ({"last_seen": "2026-11-27T10:00:00"}, "[1].last_seen: last_seen needs a time zone"),
        ({"device": ""}, "[1].device: String should have at least 1 character"),
        ({"last_seen": None}, "[1].last_seen: Input should be a valid datetime"),
    ],
)
def test_bad_entry_names_index_and_field_and_writes_nothing(
    tmp_path: Path,
    store_url: str,
    capsys: pytest.CaptureFixture[str],
    entry: dict[str, Any],
    problem: str,
) -> None:
    """One bad entry fails the import naming file, index and field; the store is unchanged."""
    _write(tmp_path / "first.json", GOOD[:1])
    assert main(["reports", "import", str(tmp_path / "first.json"), "--state", store_url]) == 0
    before = _stored(store_url)
    bad = [dict(GOOD[0], last_seen="2030-01-01T00:00:00Z"), {**GOOD[1], **entry}, GOOD[2]]
    path = _write(tmp_path / "reports.json", bad)
    capsys.readouterr()
    assert main(["reports", "import", str(path), "--state", store_url]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "nothing imported" in captured.err
    assert f"{path}: {problem}" in captured.err
    assert _stored(store_url) == before


def test_every_problem_is_listed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """All bad entries are reported at once, each with its index, plus missing fields."""
    path = _write(tmp_path / "r.json", [{"device": "a"}, "junk", {**GOOD[0], "platform": "bsd"}])
    assert main(["reports", "import", str(path), "-C", str(tmp_path)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[1:] == [
        f"{path}: [0].last_seen: missing; every report needs device and last_seen",
        f"{path}: [1]: expected an object with device, last_seen, ...; found 'junk'",
        f"{path}: [2].platform: 'bsd' is not one of windows | linux | macos",
    ]
    assert not (tmp_path / ".engine").exists()


def test_duplicate_device_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A device listed twice fails naming both indices; nothing is written."""
    path = _write(tmp_path / "r.json", [GOOD[0], GOOD[1], GOOD[0]])
    assert main(["reports", "import", str(path), "-C", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "[2].device: 'berlin-pos-0001' is also at [0]; list each device once" in err
    assert not (tmp_path / ".engine").exists()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('[{"device": "a",\n  ]', ":2:3: not valid JSON: Expecting property name"),
        ('{"device": "a"}', ": expected a JSON list of reports, found an object"),
        ("", ":1:1: not valid JSON: Expecting value"),
    ],
)
def test_malformed_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, problem: str
) -> None:
    """Invalid JSON or a non-list top level fails with file (line:column) and writes nothing."""
    path = tmp_path / "r.json"
    path.write_text(content)
    assert main(["reports", "import", str(path), "-C", str(tmp_path)]) == 1
    assert f"{path}{problem}" in capsys.readouterr().err
    assert not (tmp_path / ".engine").exists()


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file that does not exist fails with its name and the reason."""
    assert main(["reports", "import", str(tmp_path / "nope.json"), "-C", str(tmp_path)]) == 1
    assert "nope.json: cannot read: No such file or directory" in capsys.readouterr().err


def test_bad_state_url(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An unsupported --state URL fails before anything is written."""
    path = _write(tmp_path / "r.json", GOOD)
    assert main(["reports", "import", str(path), "--state", "mysql://u:pw@h/db"]) == 1
    err = capsys.readouterr().err
    assert "supported: sqlite, postgresql" in err
    assert "pw" not in err.replace("postgresql", "")


def test_import_from_stdin_in_a_real_process(tmp_path: Path, store_url: str) -> None:
    """`engine reports import -` reads the list from stdin (run as a real `python -m engine`)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), ENV_STATE_URL: store_url}
    done = subprocess.run(
        [sys.executable, "-m", "engine", "reports", "import", "-"],
        input=json.dumps(GOOD),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("imported 3 reports into ")
    assert "(3 new, 0 updated)" in done.stdout
    assert len(_stored(store_url)) == 3


def test_bad_stdin_names_stdin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Errors in reports read from stdin name <stdin> as the source."""
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b'[{"device": "a"}]')))
    assert main(["reports", "import", "-", "-C", str(tmp_path)]) == 1
    assert "<stdin>: [0].last_seen: missing" in capsys.readouterr().err


def test_list_table_and_json(
    tmp_path: Path, store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`reports list` prints a table sorted by device; --json prints only one JSON list."""
    path = _write(tmp_path / "r.json", GOOD)
    assert main(["reports", "import", str(path), "--state", store_url]) == 0
    capsys.readouterr()
    assert main(["reports", "list", "--state", store_url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["DEVICE", "PLATFORM", "VERSION"]
    assert [line.split()[0] for line in lines[1:4]] == [
        "berlin-pos-0001",
        "hamburg-srv-0002",
        "munich-mac-0003",
    ]
    assert "2026-11-27 10:00:00" in lines[2]
    assert lines[-1] == "3 reports"
    assert main(["reports", "list", "--json", "--state", store_url]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [r["device"] for r in listed] == sorted(r["device"] for r in GOOD)
    assert listed[0] == {
        "device": "berlin-pos-0001",
        "agent_version": "3.0.1",
        "platform": "windows",
        "last_seen": "2026-11-27T10:00:00Z",
        "runtime_version": None,
        "known_good": None,
        "last_result": None,
        "python_version": None,
        "os_version": None,
        "components": None,
        "config_digest": None,
        "features": None,
    }
