"""Wire messages between `agent-runtime` and `engine serve` (device API, version 1).

Every model ignores unknown keys, so either side can be newer. Endpoints
(all JSON; device endpoints take ``Authorization: Bearer <device token>``):

- ``POST /v1/enroll`` ``EnrollRequest`` → ``EnrollResponse``
- ``POST /v1/devices/{device}/checkin`` ``CheckinRequest`` → ``CheckinResponse``
- ``POST /v1/devices/{device}/events`` ``EventBatch`` → 204
- ``POST /v1/devices/{device}/heartbeat`` ``Heartbeat`` → 204
- ``GET  /v1/devices/{device}/heartbeat`` → ``Heartbeat`` (the server's record)
- ``GET  /v1/releases`` → ``{"releases": [{"version", "serial", "signed"}]}``
- ``GET  /v1/releases/{version}/manifest`` and ``.../signature`` → the exact signed bytes
- ``GET  /v1/artifacts/{sha256}`` → file bytes, with HTTP Range support
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from fleetbase.platform import Platform
from fleetbase.version import Version
from states.config_bundle import ConfigBundle
from states.plan import DevicePlan, ReleaseRef, StepName
from states.requires import MAX_COMPONENTS, ComponentName, FactVersion

__all__ = [
    "API_PREFIX",
    "FEATURE_CONFIG",
    "FEATURE_RUNTIME_UPDATE",
    "MAX_INT32",
    "AdoptionReport",
    "CheckinRequest",
    "CheckinResponse",
    "EnrollRequest",
    "EnrollResponse",
    "EventBatch",
    "Heartbeat",
    "Instant",
    "PerformanceSample",
    "RuntimeOffer",
    "RuntimeUpdateReport",
    "StepEvent",
    "TransactionReport",
]

API_PREFIX = "/v1"
#: ``CheckinRequest.features`` of a runtime that installs managed config files and flags.
FEATURE_CONFIG = "config"
#: ``CheckinRequest.features`` of a runtime that can take a runtime release: it runs under
#: the supervisor (``agent_runtime/supervisor.py``) from a usable runtime home.
FEATURE_RUNTIME_UPDATE = "runtime_update"

DeviceId = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:-]+$")]

#: Largest process id or counter a message may carry (a 32-bit signed column holds it).
MAX_INT32 = 2**31 - 1
#: Years an instant in a message may fall in (UTC): a clock far outside is a broken one.
MIN_YEAR, MAX_YEAR = 1970, 9000


def _bounded_instant(value: datetime) -> datetime:
    """``value`` in UTC (a naive one is taken as UTC), refused outside MIN_YEAR..MAX_YEAR."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        utc = value.astimezone(UTC)
    except OverflowError as e:
        raise ValueError(f"must lie between the years {MIN_YEAR} and {MAX_YEAR} (UTC)") from e
    if not MIN_YEAR <= utc.year <= MAX_YEAR:
        raise ValueError(f"must lie between the years {MIN_YEAR} and {MAX_YEAR} (UTC)")
    return utc


#: A point in time as messages carry it: ISO 8601, within MIN_YEAR..MAX_YEAR, kept in UTC.
Instant = Annotated[datetime, AfterValidator(_bounded_instant)]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class EnrollRequest(_Wire):
    """A device asks for its token, proving it holds its single-use invite code (``engine
    devices invite``), knows the fleet's enrollment secret, or holds its current token.

    ``device_key`` is a random secret the device generated and keeps: the server stores
    its hash at the first enrollment, accepts it later in place of approval, and files
    an enrollment request under it when an enrolled id asks again with the fleet secret.
    """

    device: DeviceId
    platform: Platform
    enrollment_secret: str | None = Field(default=None, min_length=1, max_length=500)
    invite_code: str | None = Field(default=None, min_length=1, max_length=200)
    token: str | None = Field(default=None, min_length=1, max_length=500)
    device_key: str | None = Field(default=None, min_length=32, max_length=200)
    runtime_version: str | None = Field(default=None, max_length=100)

    @model_validator(mode="after")
    def _one_proof(self) -> EnrollRequest:
        if self.enrollment_secret is not None and self.invite_code is not None:
            raise ValueError("give invite_code or enrollment_secret, not both")
        if self.enrollment_secret is None and self.invite_code is None and self.token is None:
            raise ValueError("give invite_code, enrollment_secret or token")
        return self


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
    attempts: int = Field(default=0, ge=0, le=MAX_INT32)
    detail: str | None = Field(default=None, max_length=2000)
    finished_at: Instant | None = None


class AdoptionReport(_Wire):
    """How the runtime took over the agent it found installed (``agent-runtime adopt``)."""

    status: str = Field(max_length=20, description="known | unknown | empty")
    version: Version | None = Field(default=None, description="the release the files are")
    detail: str | None = Field(default=None, max_length=2000)


class PerformanceSample(_Wire):
    """What the running agent's process costs, sampled by the runtime at a check-in.

    ``cpu_percent`` is its CPU use since the previous sample of the same process
    (100 = one core; None for a process's first sample); ``rss_bytes`` its
    resident memory now. Absent from runtimes that do not sample (and ignored
    by servers that do not keep them).
    """

    version: Version = Field(description="the release the sampled process runs (its heartbeat)")
    pid: int = Field(ge=0)
    cpu_percent: float | None = Field(default=None, ge=0, le=100_000)
    rss_bytes: int = Field(ge=0)
    at: datetime


class RuntimeUpdateReport(_Wire):
    """The outcome of the runtime's last self-update, reported by the runtime that runs now.

    ``result``: ``confirmed`` (the new runtime checked in), ``reverted`` (it exited or did
    not check in within its time; the supervisor restored the previous one) or ``failed``
    (the new runtime could not be installed; nothing was switched).
    """

    target: str = Field(max_length=100)
    result: str = Field(max_length=20, description="confirmed | reverted | failed")
    detail: str | None = Field(default=None, max_length=2000)
    at: Instant | None = None


class RuntimeOffer(_Wire):
    """A runtime release the device should move its runtime to (a runtime rollout).

    ``releases`` is a server path (``/runtime/releases/<version>/``) under which the
    device finds its target's signed bundle (``<target>/bundle.json`` and the wheels).
    """

    version: str = Field(max_length=100)
    rollout: str = Field(max_length=300)
    releases: str = Field(max_length=500)


class CheckinRequest(_Wire):
    """A device's periodic report: what is installed and how its last transaction went."""

    platform: Platform
    agent_version: Version | None = None
    known_good: Version | None = None
    runtime_version: str | None = Field(default=None, max_length=100)
    agent_running: bool | None = None
    transaction: TransactionReport | None = None
    adoption: AdoptionReport | None = None
    performance: PerformanceSample | None = None
    #: What releases' ``requires:`` is checked against (states.requires); absent from
    #: older runtimes, whose devices a release with such a requirement then does not reach.
    python_version: FactVersion | None = None
    os_version: FactVersion | None = None
    components: dict[ComponentName, FactVersion] | None = Field(
        default=None, max_length=MAX_COMPONENTS
    )
    runtime_update: RuntimeUpdateReport | None = None
    #: the digest of the managed config files and flags the device runs (states.config_bundle)
    config_digest: str | None = Field(default=None, max_length=80)
    #: what this runtime can do beyond the base protocol: ``config`` (it installs
    #: ``CheckinResponse.config``), ``runtime_update`` (it can take ``CheckinResponse.runtime``);
    #: absent from older runtimes. The server keeps them with the report (the plan reads them).
    features: list[Annotated[str, Field(max_length=50)]] = Field(
        default_factory=list, max_length=20
    )


class CheckinResponse(_Wire):
    """The device's plan (or none) and when to check in next.

    ``release`` locates the desired release; its locations are paths on the
    server (``/v1/...``), resolved against the server URL the device uses.
    """

    plan: DevicePlan | None = None
    release: ReleaseRef | None = None
    poll_interval: float = Field(description="seconds until the next check-in, jitter applied")
    runtime: RuntimeOffer | None = None
    #: the config files and flags the plan installs (absent: the release manages none)
    config: ConfigBundle | None = None


class StepEvent(_Wire):
    """One phase of a device's transaction starting, passing or failing."""

    target: Version
    step: StepName | Annotated[str, Field(max_length=50)] = Field(
        description="a StepName, or rollback_* phases"
    )
    status: str = Field(max_length=50, description="started | ok | failed")
    detail: str | None = Field(default=None, max_length=2000)
    at: Instant


class EventBatch(_Wire):
    """Events a device sends at once (the runtime batches per transaction)."""

    events: list[StepEvent] = Field(max_length=100)


class Heartbeat(_Wire):
    """The agent's last heartbeat as the runtime forwards it (or the server recorded it)."""

    version: Version
    at: Instant
    pid: int | None = Field(default=None, ge=0, le=MAX_INT32)
