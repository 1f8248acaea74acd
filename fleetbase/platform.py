"""The operating system families devices run."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Platform"]


class Platform(StrEnum):
    """Operating system family of a device."""

    WINDOWS = "windows"
    LINUX = "linux"
    MACOS = "macos"
