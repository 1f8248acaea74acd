"""Which database the store uses, and how to print its URL without secrets."""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from engine.errors import StoreError

__all__ = [
    "ENV_STATE_URL",
    "default_state_url",
    "normalize_url",
    "redact_url",
    "resolve_state_url",
    "settings_state",
]

#: Environment variable that overrides engine.yaml's ``state`` (but not ``--state``).
ENV_STATE_URL = "ENGINE_STATE_URL"

_SUPPORTED = ("sqlite", "postgresql")


def default_state_url(root: Path) -> str:
    """The SQLite URL of the store inside an operator repo: ``ROOT/.engine/state.db``."""
    return f"sqlite:///{(root / '.engine' / 'state.db').resolve()}"


def resolve_state_url(root: Path, cli_value: str | None, settings_state: str | None) -> str:
    """Pick the store URL: ``--state``, then $ENGINE_STATE_URL, then engine.yaml, then SQLite.

    Empty values count as unset. The result is normalised (see ``normalize_url``);
    raises StoreError for a URL that is not a supported database.
    """
    for candidate in (cli_value, os.environ.get(ENV_STATE_URL), settings_state):
        if candidate and candidate.strip():
            return normalize_url(candidate.strip(), root=root)
    return default_state_url(root)


def normalize_url(url: str, *, root: Path | None = None) -> str:
    """Check a store URL and bring it into the form SQLAlchemy opens.

    ``postgresql://`` and ``postgres://`` become ``postgresql+psycopg://`` (psycopg 3);
    a relative SQLite path is taken relative to ``root`` when given. Raises
    StoreError naming the URL (password hidden) and the supported schemes.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise StoreError(
            f"state URL {redact_url(url)!r} is not a database URL; expected e.g. "
            "sqlite:///path/state.db or postgresql://user@host/dbname"
        ) from e
    backend = parsed.get_backend_name()
    if backend == "postgres":
        backend = "postgresql"
    if backend not in _SUPPORTED:
        raise StoreError(
            f"state URL {redact_url(url)!r} uses {backend!r}; supported: sqlite, postgresql"
        )
    if backend == "postgresql":
        if "+" in parsed.drivername and parsed.get_driver_name() != "psycopg":
            raise StoreError(
                f"state URL {redact_url(url)!r} uses driver {parsed.get_driver_name()!r}; "
                "use postgresql:// or postgresql+psycopg://"
            )
        parsed = parsed.set(drivername="postgresql+psycopg")
    elif parsed.database and parsed.database != ":memory:" and root is not None:
        path = Path(parsed.database)
        if not path.is_absolute():
            parsed = parsed.set(database=str((root / path).resolve()))
    return parsed.render_as_string(hide_password=False)


def redact_url(url: str) -> str:
    """The URL with its password replaced by ``***``, safe to print and log."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        # Not parseable: hide anything between "://user:" and "@" ourselves.
        scheme, sep, rest = url.partition("://")
        if not sep or "@" not in rest:
            return url
        creds, _, host = rest.rpartition("@")
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}" if ":" in creds else url


def settings_state(root: Path) -> str | None:
    """The ``state`` key of ``ROOT/engine.yaml``, or None when the file or key is absent.

    Reads only that key, so that commands touching just the store work while
    the rest of the operator repo is broken. Raises StoreError when engine.yaml
    is not YAML or ``state`` is not a string.
    """
    path = root / "engine.yaml"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StoreError(f"{path}: cannot read: {e.strerror}") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise StoreError(f"{where}: not valid YAML: {getattr(e, 'problem', e)}") from e
    if not isinstance(data, dict) or data.get("state") is None:
        return None
    state = data["state"]
    if not isinstance(state, str):
        raise StoreError(
            f"{path}: state: expected a database URL string, found {type(state).__name__}"
        )
    return state
