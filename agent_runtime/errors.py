"""Errors of the agent runtime: one root, one class per kind of failure."""

from __future__ import annotations

__all__ = ["AgentRuntimeError", "HealthCheckError", "ServiceError"]


class AgentRuntimeError(Exception):
    """Root of every error the agent runtime raises on purpose."""


class ServiceError(AgentRuntimeError):
    """The service manager refused or failed to start, stop or query the agent."""


class HealthCheckError(AgentRuntimeError):
    """A health check is misconfigured and cannot be run at all."""
