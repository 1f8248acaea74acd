"""Enrollment: trade the device's invite code (or the fleet secret) for its token."""

from __future__ import annotations

from agent_runtime._pull_basics import SECRET_ENV, TokenFile, device_key, enrollment_proof
from agent_runtime.config import DeviceConfig
from agent_runtime.errors import ConfigError
from agent_runtime.server_client import ServerClient
from states.protocol import EnrollResponse

__all__ = ["enroll", "runtime_version"]


def runtime_version() -> str:
    """The installed runtime package's version ("unknown" when not installed as a package)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fleet-rollout")
    except PackageNotFoundError:
        return "unknown"


def enroll(config: DeviceConfig, client: ServerClient, tokens: TokenFile) -> EnrollResponse:
    """Enroll with the invite code (then deleting its file) or the enrollment secret, and the
    device key, and keep the token; ConfigError when neither is configured, ServerError when
    refused (ServerAuthError ``code`` "approval_pending": an operator must approve)."""
    proof = enrollment_proof(config)
    if proof is None:
        raise ConfigError(
            f"{tokens.path} does not exist and no invite code or enrollment secret is "
            "configured (server.enrollment_code_file, server.enrollment_code, "
            f"server.enrollment_secret_file, server.enrollment_secret or ${SECRET_ENV})"
        )
    answer = client.enroll(
        config.platform,
        proof.secret,
        runtime_version(),
        invite_code=proof.invite_code,
        device_key=device_key(tokens),
    )
    tokens.save(answer.token)
    proof.used()
    return answer
