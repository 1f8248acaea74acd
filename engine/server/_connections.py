"""Connection limits uvicorn lacks: a header-read timeout, a header size cap, a connection cap.

uvicorn times out idle keep-alive connections but not a client that sends
half a request and stops (or drips one header byte at a time), and accepts
connections until the process runs out of file descriptors. The protocol here
is uvicorn's own (httptools) with three guards added per connection:

* the request line and headers must arrive within ``header_timeout`` seconds
  of the connection opening or the previous answer; else the connection is
  closed (a 408 is pointless to a client that does not read);
* headers larger than ``max_header_bytes`` are answered 431 and closed;
* beyond ``max_connections`` open connections per worker, a new one is
  closed at once (the kernel's listen backlog holds the rest briefly).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["ConnectionLimits", "EngineConfig", "LimitedHttpProtocol"]

log = logging.getLogger("engine.server")

_431 = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: text/plain; charset=utf-8\r\ncontent-length: 29\r\n"
    b"connection: close\r\n\r\nrequest headers are too large"
)


@dataclass(frozen=True)
class ConnectionLimits:
    """How long and how much one client may hold the server (per worker process)."""

    header_timeout: float = 10.0
    keep_alive_timeout: float = 5.0
    max_connections: int = 1000
    max_header_bytes: int = 32 * 1024


class EngineConfig(uvicorn.Config):
    """uvicorn's config carrying the limits to each worker (it is pickled to them)."""

    def __init__(self, app: Any, *, limits: ConnectionLimits, **kwargs: Any) -> None:
        """uvicorn.Config with ``limits`` and the protocol that enforces them."""
        super().__init__(
            app,
            http=LimitedHttpProtocol,
            timeout_keep_alive=max(1, round(limits.keep_alive_timeout)),
            **kwargs,
        )
        self.limits = limits


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header timeout, header cap and connection cap."""

    _refused_logged_at = 0.0

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        """As uvicorn's, reading the limits from an EngineConfig (defaults otherwise)."""
        super().__init__(config, *args, **kwargs)
        self._limits: ConnectionLimits = getattr(config, "limits", ConnectionLimits())
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        self._awaiting_headers = True
        self._boundary_in_chunk = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Accept the connection unless the cap is reached; start the header clock."""
        if len(self.connections) >= self._limits.max_connections:
            transport.close()
            self._note_refused()
            return
        super().connection_made(transport)  # type: ignore[arg-type]
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the header clock; as uvicorn's otherwise."""
        self._cancel_header_timer()
        if self.transport is None:  # refused in connection_made
            return
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """As uvicorn's; then 431 when the headers so far exceed the cap."""
        self._boundary_in_chunk = False
        super().data_received(data)
        if self._awaiting_headers and not self._boundary_in_chunk and self.transport is not None:
            # No headers or body ended in this chunk and headers are awaited: all of it is headers.
            self._header_bytes += len(data)
            if self._header_bytes > self._limits.max_header_bytes:
                self._cancel_header_timer()
                self._awaiting_headers = False
                if not self.transport.is_closing():
                    self.transport.write(_431)
                    self.transport.close()

    def on_headers_complete(self) -> None:
        """The request's headers are in: its handler may take its time."""
        self._awaiting_headers = False
        self._boundary_in_chunk = True
        self._cancel_header_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        """The request's body is in: what follows is the next request's headers."""
        self._awaiting_headers = True
        self._boundary_in_chunk = True  # this chunk ended a body: none of it is headers
        self._header_bytes = 0
        super().on_message_complete()

    def on_response_complete(self) -> None:
        """The answer is out: the next request's headers are on the clock again."""
        super().on_response_complete()
        if not self.transport.is_closing() and not self.pipeline:
            self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(
            self._limits.header_timeout, self._header_timed_out
        )

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self._awaiting_headers and not self.transport.is_closing():
            self.transport.close()

    def _note_refused(self) -> None:
        # One line per minute at most: a flood must not flood the log as well.
        now = time.monotonic()
        if now - LimitedHttpProtocol._refused_logged_at >= 60:
            LimitedHttpProtocol._refused_logged_at = now
            log.warning(
                "connection refused: %d connections open (max_connections); "
                "see docs/server.md on limits",
                len(self.connections),
            )
