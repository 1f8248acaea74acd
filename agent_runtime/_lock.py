"""One runtime per device at a time: an exclusive, non-blocking lock on a file."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from agent_runtime.errors import AgentRuntimeError

__all__ = ["exclusive"]


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (one runtime per device at a time)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        try:
            import fcntl

            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as e:
                raise AgentRuntimeError(
                    f"{path}: another agent-runtime is converging this device"
                ) from e
        except ImportError:  # Windows: msvcrt locking
            import msvcrt

            try:
                msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
            except OSError as e:
                raise AgentRuntimeError(
                    f"{path}: another agent-runtime is converging this device"
                ) from e
        yield
