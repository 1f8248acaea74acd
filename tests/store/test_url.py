"""Store URL resolution, normalisation and redaction."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.store import (
    ENV_STATE_URL,
    StoreError,
    default_state_url,
    normalize_url,
    redact_url,
    resolve_state_url,
    settings_state,
)


@pytest.fixture(autouse=True)
def _no_env_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_STATE_URL, raising=False)


def test_default_is_sqlite_in_dot_engine(tmp_path: Path) -> None:
    """With nothing configured the store is SQLite at DIR/.engine/state.db."""
    url = resolve_state_url(tmp_path, None, None)
    assert url == f"sqlite:///{tmp_path.resolve()}/.engine/state.db"
    assert url == default_state_url(tmp_path)


def test_flag_beats_env_beats_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--state wins over $ENGINE_STATE_URL, which wins over engine.yaml's state."""
    flag, env, settings = "sqlite:////a/flag.db", "sqlite:////a/env.db", "sqlite:////a/yaml.db"
    assert resolve_state_url(tmp_path, None, settings) == settings
    monkeypatch.setenv(ENV_STATE_URL, env)
    assert resolve_state_url(tmp_path, None, settings) == env
    assert resolve_state_url(tmp_path, flag, settings) == flag


def test_empty_values_count_as_unset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty flag or environment variable falls through to the next source."""
    monkeypatch.setenv(ENV_STATE_URL, "")
    assert resolve_state_url(tmp_path, "  ", None) == default_state_url(tmp_path)


def test_postgresql_urls_use_psycopg3() -> None:
    """postgresql:// and postgres:// are rewritten to the psycopg 3 driver."""
    assert normalize_url("postgresql://u@h:5432/db") == "postgresql+psycopg://u@h:5432/db"
    assert normalize_url("postgres://u:pw@h/db") == "postgresql+psycopg://u:pw@h/db"
    assert normalize_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"


def test_relative_sqlite_path_is_relative_to_repo(tmp_path: Path) -> None:
    """A relative SQLite path in engine.yaml means a path inside the operator repo."""
    url = resolve_state_url(tmp_path, None, "sqlite:///var/state.db")
    assert url == f"sqlite:///{tmp_path.resolve()}/var/state.db"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mysql://u@h/db", "uses 'mysql'; supported: sqlite, postgresql"),
        ("postgresql+asyncpg://u@h/db", "uses driver 'asyncpg'"),
        ("not a url", "is not a database URL"),
    ],
)
def test_unsupported_urls_are_refused(url: str, expected: str) -> None:
    """URLs of other databases or drivers fail with the supported choices."""
    with pytest.raises(StoreError, match=expected):
        normalize_url(url)


def test_refused_url_message_hides_password() -> None:
    """The error for an unsupported URL does not print its password."""
    with pytest.raises(StoreError) as info:
        normalize_url("mysql://admin:hunter2@h/db")
    assert "hunter2" not in str(info.value)
    assert "admin:***@h" in str(info.value)


@pytest.mark.parametrize(
    ("url", "printed"),
    [
        (
            "postgresql+psycopg://admin:s3cret@db:5432/engine",
            "postgresql+psycopg://admin:***@db:5432/engine",
        ),
        ("postgresql://admin@db/engine", "postgresql://admin@db/engine"),
        ("sqlite:////tmp/state.db", "sqlite:////tmp/state.db"),
        ("weird://user:pw@host", "weird://user:***@host"),
    ],
)
def test_redact_url(url: str, printed: str) -> None:
    """redact_url hides passwords and leaves everything else as it was."""
    assert redact_url(url) == printed


def test_settings_state_reads_engine_yaml(tmp_path: Path) -> None:
    """engine.yaml's state key is read; a missing file or key gives None."""
    assert settings_state(tmp_path) is None
    (tmp_path / "engine.yaml").write_text("server_url: http://x\n")
    assert settings_state(tmp_path) is None
    (tmp_path / "engine.yaml").write_text("state: postgresql://db/engine\n")
    assert settings_state(tmp_path) == "postgresql://db/engine"


def test_settings_state_errors_name_the_file(tmp_path: Path) -> None:
    """A broken engine.yaml or a non-string state fails with the file (and line)."""
    (tmp_path / "engine.yaml").write_text("state: [1\n")
    with pytest.raises(StoreError, match=r"engine\.yaml:\d+: not valid YAML"):
        settings_state(tmp_path)
    (tmp_path / "engine.yaml").write_text("state: 5\n")
    with pytest.raises(StoreError, match="state: expected a database URL string, found int"):
        settings_state(tmp_path)
