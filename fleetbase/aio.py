"""Small asyncio helpers shared by the engine and the runtime."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["attempt_until_stopped"]

T = TypeVar("T")


async def attempt_until_stopped(
    work: Awaitable[T],
    stopping: asyncio.Event,
    *,
    on_failure: Callable[[Exception], None],
    pause: float,
) -> T | None:
    """The result of ``work``; None when ``stopping`` is set first (``work`` is then
    cancelled) or when ``work`` fails (``on_failure`` is told, then the call pauses up to
    ``pause`` seconds, less if ``stopping`` is set meanwhile)."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stopping.wait())
    done, _ = await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if task not in done:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        return None
    stopped.cancel()
    try:
        return task.result()
    except Exception as e:
        on_failure(e)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), pause)
        return None
