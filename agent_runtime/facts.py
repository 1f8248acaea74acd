"""What the runtime reports about where it runs, for releases' ``requires:`` (states.requires).

Read once per process: none of it changes while the runtime runs (a new kernel
or Python means a restart).
"""

from __future__ import annotations

import platform
import ssl
from dataclasses import dataclass, field
from functools import cache

from fleetbase.platform import Platform

__all__ = ["Facts", "facts", "os_version"]

#: Longest fact sent (the protocol's bound).
_MAX = 100


@dataclass(frozen=True)
class Facts:
    """The runtime's Python, the OS version and other components' versions."""

    python_version: str
    os_version: str | None
    components: dict[str, str] = field(default_factory=dict)


def os_version(family: Platform) -> str | None:
    """The operating system version a ``requires: os`` entry of ``family`` is checked against.

    linux: the kernel release (``uname -r``, e.g. 6.1.0-18-amd64); windows: the
    build version (e.g. 10.0.19045); macos: the product version (e.g. 14.2.1).
    None when the system does not say.
    """
    if family is Platform.MACOS:
        found = platform.mac_ver()[0]
    elif family is Platform.WINDOWS:
        found = platform.version()
    else:
        found = platform.release()
    return found[:_MAX] or None


def _components() -> dict[str, str]:
    found: dict[str, str] = {}
    # The text, not OPENSSL_VERSION_INFO, whose fields moved with OpenSSL 3 ("OpenSSL
    # 3.0.19 27 Jan 2026", "OpenSSL 1.1.1w  11 Sep 2023"); LibreSSL is not OpenSSL.
    name, _, rest = ssl.OPENSSL_VERSION.partition(" ")
    if name == "OpenSSL" and rest.split():
        found["openssl"] = rest.split()[0][:_MAX]
    libc, version = platform.libc_ver()
    if libc == "glibc" and version:
        found["glibc"] = version[:_MAX]
    return found


@cache
def facts(family: Platform) -> Facts:
    """This device's facts for a runtime configured as ``family`` (read once)."""
    return Facts(
        python_version=platform.python_version(),
        os_version=os_version(family),
        components=_components(),
    )
