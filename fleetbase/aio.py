"""Small asyncio helpers shared by the engine and the runtime."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

__all__ = ["StoppedError", "unless_stopped"]

T = TypeVar("T")


class StoppedError(Exception):
    """``stopping`` was set before the awaited work finished (the work was cancelled)."""


async def unless_stopped(work: Awaitable[T], stopping: asyncio.Event) -> T:
    """The result of ``work``, or StoppedError once ``stopping`` is set first (``work`` is
    then cancelled). Exceptions of ``work`` propagate."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stopping.wait())
    done, _ = await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if task not in done:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        raise StoppedError
    stopped.cancel()
    return task.result()
