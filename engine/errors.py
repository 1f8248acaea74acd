"""Root of the engine's exceptions: catch ``EngineError`` to handle any of them."""

from __future__ import annotations

__all__ = ["EngineError", "StoreError"]


class EngineError(Exception):
    """Base of every error the engine raises on purpose."""


class StoreError(EngineError):
    """The store cannot be opened, migrated, read or written."""
