"""The engine's store: reports and rollout state in SQLite (default) or PostgreSQL."""

from engine.errors import StoreError
from engine.store._reports import ReportDigest, UpsertCounts, digest_reports
from engine.store._url import (
    ENV_STATE_URL,
    default_state_url,
    normalize_url,
    redact_url,
    resolve_state_url,
    settings_state,
)
from engine.store.store import Store

__all__ = [
    "ENV_STATE_URL",
    "ReportDigest",
    "Store",
    "StoreError",
    "UpsertCounts",
    "default_state_url",
    "digest_reports",
    "normalize_url",
    "redact_url",
    "resolve_state_url",
    "settings_state",
]
