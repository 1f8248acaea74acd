"""Errors of the agent runtime: one root, one class per kind of failure."""

from __future__ import annotations

__all__ = [
    "AgentRuntimeError",
    "ArtifactMismatchError",
    "ConfigError",
    "DowngradeError",
    "DownloadError",
    "ExpiredManifestError",
    "FaultInjectedError",
    "HealthCheckError",
    "JournalError",
    "LayoutError",
    "LinkRefusedError",
    "ManifestError",
    "NoPlanOfferedError",
    "PlanError",
    "ServerAuthError",
    "ServerError",
    "ServerProtocolError",
    "ServerUnavailableError",
    "ServiceError",
    "SignatureInvalidError",
    "SlowRetrievalError",
    "StateError",
    "TransportError",
]


class AgentRuntimeError(Exception):
    """Root of every error the agent runtime raises on purpose."""


class ServiceError(AgentRuntimeError):
    """The service manager refused or failed to start, stop or query the agent."""


class HealthCheckError(AgentRuntimeError):
    """A health check is misconfigured and cannot be run at all."""


# --- transaction, trust, download, config (appended by the transaction owner) ---


class ConfigError(AgentRuntimeError):
    """The device config file is missing, malformed or has unknown / invalid keys."""


class PlanError(AgentRuntimeError):
    """The plan cannot be read, or does not name this device or its release."""


class StateError(AgentRuntimeError):
    """The device state file cannot be read or written."""


class JournalError(AgentRuntimeError):
    """The transaction journal cannot be read or written."""


class LayoutError(AgentRuntimeError):
    """The agent root cannot be changed as the layout requires."""


class LinkRefusedError(LayoutError):
    """A symbolic link inside the agent root lies on a path the runtime would change."""


class FaultInjectedError(AgentRuntimeError):
    """A test fault point (AGENT_RUNTIME_FAULT) made a step fail."""


class DownloadError(AgentRuntimeError):
    """Transport failure fetching a manifest or artifact (network, HTTP status, stall).

    ``status`` is the HTTP status code when the server answered, else None.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class SlowRetrievalError(DownloadError):
    """A transfer stayed below the minimum average speed (slow-retrieval attack, or a link
    too slow to finish in bounded time)."""


class TransportError(AgentRuntimeError):
    """An HTTP request failed below HTTP: no connection, no answer in time, a broken transfer.

    Raised by the runtime's HTTP client and mapped by its callers to DownloadError or
    ServerUnavailableError. ``connected`` is False when no connection could be made;
    ``timed_out`` is True when a timeout ended it.
    """

    def __init__(self, message: str, *, connected: bool = True, timed_out: bool = False) -> None:
        super().__init__(message)
        self.connected = connected
        self.timed_out = timed_out


class ManifestError(AgentRuntimeError):
    """Bad data: a release that must not be installed (unsigned, expired, downgrade, mismatch)."""


class SignatureInvalidError(ManifestError):
    """The manifest's signature is missing, malformed, by an unknown key, or does not match."""


class ExpiredManifestError(ManifestError):
    """The manifest's ``expires`` instant has passed (freeze attack or stale release)."""


class DowngradeError(ManifestError):
    """The manifest's serial is below the highest seen and no rollback authorises it."""


class ArtifactMismatchError(ManifestError):
    """A downloaded file's size or sha256 differs from the signed manifest."""


# --- server connection, pull mode (appended by the pull-mode owner) ---


class ServerError(AgentRuntimeError):
    """The engine server could not be used for a request.

    ``status`` is the HTTP status code when the server answered, else None.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ServerUnavailableError(ServerError):
    """The server is unreachable, timed out, or asked to come back later (429, 5xx).

    ``retry_after`` is the server's Retry-After in seconds, when it sent one.
    """

    def __init__(
        self, message: str, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, status)
        self.retry_after = retry_after


class ServerAuthError(ServerError):
    """The server refused the device's token or its enrollment (401, 403)."""


class ServerProtocolError(ServerError):
    """The server refused a request as malformed (other 4xx) or answered something unparsable."""


class NoPlanOfferedError(PlanError):
    """The server's check-in answer carries no plan: nothing to do this time."""
