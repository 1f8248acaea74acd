"""NATS: the connection settings and the two messages the engine and the runtime share.

NATS is optional (off unless a ``nats`` section is configured). Two uses:

- **nudges**: when the controller offers a device a plan (a wave opened, a
  slot freed, a rollback), the engine publishes a ``Nudge`` on the device's
  subject (default ``fleet.nudge.<device>``); the runtime checks in at once,
  after a random delay of up to ``Nudge.spread`` seconds. A lost nudge costs
  one poll interval: polling stays the fallback.
- **heartbeats**: agents publish a ``BusHeartbeat`` on their subject (default
  ``fleet.heartbeat.<device>``); the engine records it like an HTTP heartbeat
  (JetStream durable consumer) and the runtime's ``nats`` health check kind
  confirms a new version by it.

Credentials come from files (a ``.creds`` file, an NKey seed file, a file
holding ``user:password`` or a token), never from the command line or inline.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fleetbase.version import Version

__all__ = [
    "DEFAULT_HEARTBEAT_SUBJECT",
    "DEFAULT_NUDGE_SUBJECT",
    "MAX_NUDGE_SPREAD",
    "BusHeartbeat",
    "NatsConnection",
    "Nudge",
    "device_subject",
    "validate_subject_template",
]

#: Where a device's nudges go; ``{device}`` is replaced by the device id.
DEFAULT_NUDGE_SUBJECT = "fleet.nudge.{device}"
#: Where a device's agent publishes its heartbeat; ``{device}`` as above.
DEFAULT_HEARTBEAT_SUBJECT = "fleet.heartbeat.{device}"
#: The longest random delay a nudge may ask a device to wait before checking in.
MAX_NUDGE_SPREAD = 300.0

# A subject token: what NATS allows between dots, minus wildcards and whitespace.
_TOKEN = r"[^.\s*>]+"
_SUBJECT_TEMPLATE = re.compile(rf"^({_TOKEN}|\{{device\}})(\.({_TOKEN}|\{{device\}}))*$")


def validate_subject_template(value: str) -> str:
    """``value`` when it is a subject template with ``{device}`` as one token, else ValueError."""
    if "{device}" not in value:
        raise ValueError(f"subject {value!r} must contain '{{device}}' (the device id)")
    if value.count("{device}") != 1 or not _SUBJECT_TEMPLATE.match(value):
        raise ValueError(
            f"subject {value!r} is not a NATS subject template: dot-separated tokens "
            "without spaces or wildcards (* >), with '{device}' as one whole token"
        )
    return value


def device_subject(template: str, device: str) -> str:
    """The subject of ``device`` in ``template`` (``{device}`` replaced)."""
    return template.replace("{device}", device)


class NatsConnection(BaseModel):
    """How to reach a NATS server: its URL(s) and, optionally, credentials from files."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(
        min_length=1,
        max_length=2000,
        description="nats://host:port (or tls://); several servers separated by commas",
    )
    credentials_file: Path | None = Field(
        default=None, description="a NATS .creds file (user JWT and NKey seed)"
    )
    nkey_seed_file: Path | None = Field(default=None, description="a file holding an NKey seed")
    user_password_file: Path | None = Field(
        default=None, description="a file holding 'user:password' on its first line"
    )
    token_file: Path | None = Field(default=None, description="a file holding an auth token")
    connect_timeout: float = Field(default=5.0, gt=0, le=120)

    @field_validator("url")
    @classmethod
    def _nats_urls(cls, value: str) -> str:
        for part in value.split(","):
            scheme = part.strip().split("://", 1)[0] if "://" in part else ""
            if scheme not in ("nats", "tls", "ws", "wss"):
                raise ValueError(
                    f"{part.strip()!r} is not a NATS URL: expected nats://host:port "
                    "(or tls://, ws://, wss://)"
                )
            if "@" in part:
                raise ValueError(
                    "credentials in the NATS URL are refused: put them in "
                    "user_password_file, token_file, nkey_seed_file or credentials_file"
                )
        return value

    @model_validator(mode="after")
    def _one_auth(self) -> NatsConnection:
        given = [
            name
            for name in ("credentials_file", "nkey_seed_file", "user_password_file", "token_file")
            if getattr(self, name) is not None
        ]
        if len(given) > 1:
            raise ValueError(f"give at most one of {', '.join(given)}")
        return self

    @property
    def servers(self) -> list[str]:
        """The server URLs."""
        return [p.strip() for p in self.url.split(",") if p.strip()]

    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect`` (nats-py): servers, timeout, credentials.

        Reads the credential file named in the settings; raises ValueError naming the
        file when it cannot be read or is malformed.
        """
        options: dict[str, Any] = {
            "servers": self.servers,
            "connect_timeout": self.connect_timeout,
        }
        if self.credentials_file is not None:
            _readable(self.credentials_file, "credentials_file")
            options["user_credentials"] = str(self.credentials_file)
        elif self.nkey_seed_file is not None:
            _readable(self.nkey_seed_file, "nkey_seed_file")
            options["nkeys_seed"] = str(self.nkey_seed_file)
        elif self.user_password_file is not None:
            line = _first_line(self.user_password_file, "user_password_file")
            user, sep, password = line.partition(":")
            if not sep or not user:
                raise ValueError(
                    f"user_password_file {self.user_password_file}: expected 'user:password' "
                    "on the first line"
                )
            options["user"], options["password"] = user, password
        elif self.token_file is not None:
            options["token"] = _first_line(self.token_file, "token_file")
        return options


def _readable(path: Path, field: str) -> None:
    try:
        with path.open("rb"):
            pass
    except OSError as e:
        raise ValueError(f"{field} {path}: cannot read it: {e.strerror or e}") from e


def _first_line(path: Path, field: str) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{field} {path}: cannot read it: {e}") from e
    line = text.splitlines()[0].strip() if text.strip() else ""
    if not line:
        raise ValueError(f"{field} {path} is empty")
    return line


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Nudge(_Message):
    """Check in now: the engine has something for this device."""

    reason: str = Field(default="", max_length=200)
    rollout: int | None = None
    spread: float = Field(
        default=1.0, description="seconds: wait a random share of this before checking in"
    )

    @field_validator("spread")
    @classmethod
    def _bounded_spread(cls, value: float) -> float:
        if not math.isfinite(value) or value < 0:
            return 0.0
        return min(value, MAX_NUDGE_SPREAD)


class BusHeartbeat(_Message):
    """An agent's heartbeat on the bus: the running version, when, and (optionally) who."""

    version: Version
    at: datetime
    pid: int | None = Field(default=None, ge=0, le=2**31)
    device: str | None = Field(default=None, max_length=200)
