"""Root of the server's exceptions."""

from __future__ import annotations

from engine.errors import EngineError

__all__ = ["CredentialError", "ServerError"]


class ServerError(EngineError):
    """Base of every error `engine serve` raises on purpose."""


class CredentialError(ServerError):
    """The admin token or enrollment secret cannot be read or created."""
