"""The base layer: value types every other package shares, with no project dependencies.

Versions, durations, platforms, the UTC clock and the garbage-collector pause
live here so that the device runtime can use them without importing the
inventory loader (and with it Jinja2, rapidyaml and orjson).
"""

from fleetbase.clock import utc_now
from fleetbase.duration import Duration, format_duration, parse_duration
from fleetbase.gcpause import gc_paused
from fleetbase.platform import Platform
from fleetbase.version import Version, VersionError

__all__ = [
    "Duration",
    "Platform",
    "Version",
    "VersionError",
    "format_duration",
    "gc_paused",
    "parse_duration",
    "utc_now",
]
