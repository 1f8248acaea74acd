"""HTTP servers on 127.0.0.1 for tests: a threaded server helper and a misbehaving file server."""

from __future__ import annotations

import contextlib
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

__all__ = ["HttpRepo", "http_server", "serve"]


@contextlib.contextmanager
def http_server(
    handler: Callable[..., BaseHTTPRequestHandler], *, tls: ssl.SSLContext | None = None
) -> Iterator[int]:
    """Run ``handler`` on a free 127.0.0.1 port in a thread for the block (behind ``tls``
    when given); yields the port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class HttpRepo:
    """Serves a directory over HTTP with Range support, and can misbehave on request."""

    root: Path
    port: int = 0
    #: path suffix → behaviour: "stall" (send half, then hang), "extra" (append bytes),
    #: "truncate" (send half and close), "ignore_range" (always 200), "drip" (one byte
    #: every ``drip_every`` seconds: never stalls, never finishes in reasonable time)
    faults: dict[str, str] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    drip_every: float = 0.05

    @property
    def url(self) -> str:
        """Base URL."""
        return f"http://127.0.0.1:{self.port}"


def _handler(repo: HttpRepo, release: threading.Event) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            path = repo.root / self.path.lstrip("/")
            rng = self.headers.get("Range")
            repo.requests.append((self.path, rng))
            fault = next((f for s, f in repo.faults.items() if self.path.endswith(s)), None)
            if not path.is_file():
                self.send_error(404)
                return
            data = path.read_bytes()
            start = 0
            if rng and fault != "ignore_range":
                start = int(rng.removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            if fault == "extra":
                body += b"X" * 4096
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                if fault == "drip":
                    for i in range(len(body)):
                        if release.wait(repo.drip_every):
                            return
                        self.wfile.write(body[i : i + 1])
                        self.wfile.flush()
                    return
                if fault in ("stall", "truncate"):
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    if fault == "stall":
                        release.wait(30)
                    return
                self.wfile.write(body)
            except OSError:
                pass

    return Handler


@contextlib.contextmanager
def serve(root: Path, faults: dict[str, str] | None = None) -> Iterator[HttpRepo]:
    """Serve ``root`` on 127.0.0.1 (a free port) for the duration of the block."""
    repo = HttpRepo(root, faults=dict(faults or {}))
    release = threading.Event()  # set on exit: stalled answers end
    with http_server(_handler(repo, release)) as port:
        repo.port = port
        try:
            yield repo
        finally:
            release.set()
