"""The device installer `engine serve` hands out at ``/install/<platform>``."""

from __future__ import annotations

__all__: list[str] = []
