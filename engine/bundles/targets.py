"""Device targets of runtime bundles (``<platform>-<arch>-py<X.Y>``) and their wheel tags."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from engine.errors import EngineError
from states.bundle import TARGET_RE, local_target_name

__all__ = ["ARCHES", "Target", "TargetError", "local_target", "parse_target"]

#: Architectures per platform, spelled as the OS names them (``platform.machine()``).
ARCHES: dict[str, tuple[str, ...]] = {
    "linux": ("x86_64", "aarch64"),
    "macos": ("x86_64", "arm64"),
    "windows": ("amd64", "arm64"),
}

#: The oldest Python the runtime supports (pyproject's requires-python).
MIN_PYTHON = (3, 11)


class TargetError(EngineError):
    """A target name that is malformed or names an unsupported platform, arch or Python."""


@dataclass(frozen=True)
class Target:
    """One kind of device a bundle installs on."""

    platform: str
    arch: str
    python: str

    @property
    def name(self) -> str:
        """``<platform>-<arch>-py<X.Y>``, the bundle's directory name."""
        return f"{self.platform}-{self.arch}-py{self.python}"

    def pip_platforms(self) -> list[str]:
        """``pip download --platform`` values, best first: the wheel tags this target runs."""
        if self.platform == "linux":
            # glibc 2.17 (manylinux2014) and older: what every maintained distribution has.
            # pip expands manylinux2014 to manylinux2010 and manylinux1 itself.
            return [f"manylinux_2_17_{self.arch}", f"manylinux2014_{self.arch}"] + [
                f"manylinux_2_{minor}_{self.arch}" for minor in (12, 5)
            ]
        if self.platform == "macos":
            # pip expands a macOS tag to every older version and to universal2.
            return ["macosx_11_0_arm64" if self.arch == "arm64" else "macosx_10_15_x86_64"]
        return [f"win_{self.arch}"]


def parse_target(text: str) -> Target:
    """The target named ``text``; raise TargetError saying what is allowed."""
    m = TARGET_RE.match(text)
    if m is None:
        raise TargetError(
            f"target {text[:80]!r} is not <platform>-<arch>-py<X.Y> "
            "(e.g. linux-x86_64-py3.11; platform: linux, macos, windows)"
        )
    platform, arch, python = m.groups()
    if arch not in ARCHES[platform]:
        raise TargetError(
            f"target {text}: arch {arch!r} is not one of {', '.join(ARCHES[platform])} "
            f"for {platform}"
        )
    major, minor = (int(part) for part in python.split("."))
    if (major, minor) < MIN_PYTHON:
        raise TargetError(f"target {text}: the runtime needs Python 3.11 or newer")
    return Target(platform, arch, f"{major}.{minor}")


def local_target() -> Target:
    """The target of this machine and Python. Raises TargetError on an unsupported one."""
    name = local_target_name()
    if name is None:
        raise TargetError(f"no runtime bundles for {sys.platform}: give --target")
    return parse_target(name)
