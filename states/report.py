"""What a device last said about itself: the input the planner diffs against."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fleetbase.platform import Platform
from fleetbase.version import Version

__all__ = ["Report"]


class Report(BaseModel):
    """A device's last report: which agent version runs there and when it was seen.

    ``engine reports import`` reads a JSON list of these; the server stores one
    per check-in. Unknown keys are ignored (exports from older systems carry
    more fields).
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    device: str = Field(min_length=1, max_length=200)
    agent_version: Version | None = None
    platform: Platform | None = None
    last_seen: datetime
    runtime_version: str | None = None
    known_good: Version | None = None
    last_result: str | None = Field(
        default=None, description="outcome of the last transaction, e.g. committed, rolled_back"
    )
    #: The facts releases' ``requires:`` is checked against (states.requires); None: not
    #: reported (an older runtime, or an export that does not have them).
    python_version: str | None = Field(default=None, max_length=100)
    os_version: str | None = Field(default=None, max_length=100)
    components: dict[str, str] | None = None
    config_digest: str | None = Field(
        default=None, description="digest of the managed config files and flags it runs"
    )
    #: What the runtime said it can do (``CheckinRequest.features``, sorted); None: never
    #: said (an export, or a report stored before the server kept them). The plan blocks a
    #: device whose runtime cannot take what it would be offered (engine.capabilities).
    features: tuple[Annotated[str, Field(max_length=50)], ...] | None = Field(
        default=None, max_length=20
    )

    @field_validator("last_seen")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("last_seen needs a time zone, e.g. 2026-11-27T10:00:00Z")
        return value
