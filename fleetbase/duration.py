"""Durations written as operators write them: 30s, 10m, 3h, 1d, 1h30m."""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

__all__ = ["Duration", "format_duration", "parse_duration"]

_PART_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d|w)", re.ASCII)
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: object) -> timedelta:
    """Parse '30s', '10m', '1h30m', a number of seconds, or a timedelta; raise ValueError."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 10m, 3h or 1d, found a boolean")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"duration must not be negative, found {value}")
        return _bounded(float(value), value)
    if not isinstance(value, str):
        raise ValueError(f"expected a duration such as 30s, 10m, 3h, found {type(value).__name__}")
    text = value.strip().replace(" ", "")
    pos = 0
    total = 0.0
    for m in _PART_RE.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(
            f"{value!r} is not a duration: use a number with a unit "
            "ms, s, m, h, d or w (e.g. 30s, 10m, 1h30m)"
        )
    return _bounded(total, value)


#: Longest duration accepted (about 1000 years): beyond it timedelta overflows.
_MAX_SECONDS = 1000 * 365 * 86400


def _bounded(seconds: float, value: object) -> timedelta:
    if not math.isfinite(seconds) or seconds > _MAX_SECONDS:
        raise ValueError(f"duration {value!r} is out of range (at most 1000 years)")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """Render a timedelta the way it is written in YAML (1h30m, 45s)."""
    seconds = value.total_seconds()
    if seconds == 0:
        return "0s"
    if seconds != int(seconds):
        return f"{seconds:g}s"
    rest = int(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(parts)


def _serialize(value: timedelta) -> str:
    return format_duration(value)


def _validate(value: Any) -> timedelta:
    return parse_duration(value)


Duration = Annotated[
    timedelta,
    BeforeValidator(_validate),
    PlainSerializer(_serialize, return_type=str),
    WithJsonSchema({"type": "string", "pattern": r"^(\d+(\.\d+)?(ms|s|m|h|d|w))+$"}),
]
