"""Wire messages between `agent-runtime` and `engine serve` (device API, version 1).

Every model ignores unknown keys, so either side can be newer. Endpoints
(all JSON; device endpoints take ``Authorization: Bearer <device token>``):

- ``POST /v1/enroll`` ``EnrollRequest`` → ``EnrollResponse``
- ``POST /v1/devices/{device}/checkin`` ``CheckinRequest`` → ``CheckinResponse``
- ``POST /v1/devices/{device}/events`` ``EventBatch`` → 204
- ``POST /v1/devices/{device}/heartbeat`` ``Heartbeat`` → 204
- ``GET  /v1/devices/{device}/heartbeat`` → ``Heartbeat`` (the server's record)
- ``GET  /v1/releases/{version}/manifest`` and ``.../signature`` → the exact signed bytes
- ``GET  /v1/artifacts/{sha256}`` → file bytes, with HTTP Range support
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from fleetbase.platform import Platform
from fleetbase.version import Version
from states.plan import DevicePlan, ReleaseRef, StepName

__all__ = [
    "API_PREFIX",
    "CheckinRequest",
    "CheckinResponse",
    "EnrollRequest",
    "EnrollResponse",
    "EventBatch",
    "Heartbeat",
    "StepEvent",
    "TransactionReport",
]

API_PREFIX = "/v1"

DeviceId = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:-]+$")]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class EnrollRequest(_Wire):
    """A device asks for its token, proving it knows the fleet's enrollment secret."""

    device: DeviceId
    platform: Platform
    enrollment_secret: str = Field(min_length=1, max_length=500)
    runtime_version: str | None = Field(default=None, max_length=100)


class EnrollResponse(_Wire):
    """The device's token (shown once; the server keeps only its hash)."""

    device: str
    token: str
    poll_interval: float


class TransactionReport(_Wire):
    """The runtime's last transaction, as it reports it."""

    target: Version | None = None
    phase: str | None = Field(default=None, max_length=50)
    result: str | None = Field(
        default=None, max_length=50, description="committed | rolled_back | failed | refused | noop"
    )
    attempts: int = Field(default=0, ge=0)
    detail: str | None = Field(default=None, max_length=2000)
    finished_at: datetime | None = None


class CheckinRequest(_Wire):
    """A device's periodic report: what is installed and how its last transaction went."""

    platform: Platform
    agent_version: Version | None = None
    known_good: Version | None = None
    runtime_version: str | None = Field(default=None, max_length=100)
    agent_running: bool | None = None
    transaction: TransactionReport | None = None


class CheckinResponse(_Wire):
    """The device's plan (or none) and when to check in next.

    ``release`` locates the desired release; its locations are paths on the
    server (``/v1/...``), resolved against the server URL the device uses.
    """

    plan: DevicePlan | None = None
    release: ReleaseRef | None = None
    poll_interval: float = Field(description="seconds until the next check-in, jitter applied")


class StepEvent(_Wire):
    """One phase of a device's transaction starting, passing or failing."""

    target: Version
    step: StepName | str = Field(description="a StepName, or rollback_* phases")
    status: str = Field(max_length=50, description="started | ok | failed")
    detail: str | None = Field(default=None, max_length=2000)
    at: datetime


class EventBatch(_Wire):
    """Events a device sends at once (the runtime batches per transaction)."""

    events: list[StepEvent] = Field(max_length=100)


class Heartbeat(_Wire):
    """The agent's last heartbeat as the runtime forwards it (or the server recorded it)."""

    version: Version
    at: datetime
    pid: int | None = None
