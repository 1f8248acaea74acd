"""A small HTTP/1.1 client on the standard library's ``http.client``: just what the runtime needs.

Why not ``requests``: a runtime that has used it keeps ``requests``, ``urllib3``,
``charset_normalizer`` and ``idna`` resident (about 6.5 MB of a 50 MB budget;
see docs/runtime.md, Performance). This client keeps what the runtime relied
on: separate connect and read (stall) timeouts, streaming bodies, keep-alive
connection reuse, https with certificate and hostname verification against the
system's CA store, and the ``HTTP(S)_PROXY`` / ``NO_PROXY`` environment.
It sends ``Accept-Encoding: identity`` (no compressed bodies: a download's
size is the manifest's size) and never follows redirects.

Transport failures raise ``TransportError``; callers map them to their own
errors (``DownloadError``, ``ServerUnavailableError``). HTTP statuses are not
errors here.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import select
import socket
import sys
import threading
import time
from collections.abc import Mapping
from http.client import HTTPConnection, HTTPException, HTTPResponse, HTTPSConnection
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from agent_runtime.errors import TransportError

if TYPE_CHECKING:
    import ssl

__all__ = ["HttpClient", "Response", "proxy_for", "tls_context"]

#: Environment variables naming a CA bundle; OpenSSL itself honours SSL_CERT_FILE / SSL_CERT_DIR.
CA_BUNDLE_ENV = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")

_HASHED_NAME = re.compile(r"^[0-9a-f]{8}\.[0-9]+\Z")
_tls_lock = threading.Lock()
_tls_cache: dict[tuple[str | None, ...], ssl.SSLContext] = {}


def tls_context() -> ssl.SSLContext:
    """The process's verifying TLS context (certificate and host name checked), built on
    first https use and shared by every client.

    Trusted CAs: the bundle named by ``$SSL_CERT_FILE`` (or ``$REQUESTS_CA_BUNDLE`` /
    ``$CURL_CA_BUNDLE``) when set; else the system's hashed CA directory (``$SSL_CERT_DIR``
    or OpenSSL's default, e.g. /etc/ssl/certs), from which OpenSSL loads only the CAs a
    handshake needs; else the system's default store (CA file, the Windows store);
    certifi's bundle only when the system has no CA at all.
    """
    key = tuple(os.environ.get(k) for k in ("SSL_CERT_FILE", "SSL_CERT_DIR", *CA_BUNDLE_ENV))
    with _tls_lock:
        ctx = _tls_cache.get(key)
        if ctx is None:
            ctx = _tls_cache[key] = _make_tls_context()
        return ctx


def _make_tls_context() -> ssl.SSLContext:
    import ssl

    bundle = next((os.environ[k] for k in CA_BUNDLE_ENV if os.environ.get(k)), None)
    capath = ssl.get_default_verify_paths().capath
    if bundle is None and not os.environ.get("SSL_CERT_FILE") and _is_hashed_ca_dir(capath):
        # loading the whole CA file parses ~150 certificates (~0.8 MB kept resident)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
        ctx.load_verify_locations(capath=capath)
        return ctx
    ctx = ssl.create_default_context()
    if bundle is not None:
        ctx.load_verify_locations(cafile=bundle)
    if ctx.cert_store_stats()["x509_ca"] == 0 and not _is_hashed_ca_dir(capath):
        with contextlib.suppress(ImportError):  # e.g. a python.org build on macOS
            import certifi

            ctx.load_verify_locations(cafile=certifi.where())
    return ctx


def _is_hashed_ca_dir(path: str | None) -> bool:
    """True for a directory holding OpenSSL's hash-named CA links (``5ad8a5d6.0``)."""
    if not path or not os.path.isdir(path):
        return False
    try:
        with os.scandir(path) as entries:
            return any(_HASHED_NAME.match(e.name) for e in entries)
    except OSError:
        return False


def proxy_for(scheme: str, host: str, env: Mapping[str, str] | None = None) -> str | None:
    """The proxy URL the environment names for ``scheme://host`` (``HTTPS_PROXY``,
    ``HTTP_PROXY``, lower-case too), or None when there is none or ``NO_PROXY`` covers host."""
    env = os.environ if env is None else env
    proxy = env.get(f"{scheme}_proxy") or env.get(f"{scheme.upper()}_PROXY")
    if not proxy:
        return None
    no_proxy = env.get("no_proxy") or env.get("NO_PROXY") or ""
    name = host.lower().strip("[]")
    for raw in no_proxy.replace(" ", ",").split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return None
        entry = entry.lstrip(".").strip("[]")
        if ":" in entry and entry.count(":") == 1:
            entry = entry.split(":", 1)[0]  # host:port entries: the host part
        if name == entry or name.endswith("." + entry):
            return None
    return proxy if "://" in proxy else f"http://{proxy}"


class Response:
    """An HTTP answer whose body is read as a stream; close it (or use ``with``)."""

    def __init__(self, client: HttpClient, raw: HTTPResponse, method: str, url: str) -> None:
        self._client = client
        self._raw = raw
        self.method = method
        self.url = url
        self.status = raw.status
        self.reason = raw.reason
        self.headers = raw.headers
        length = raw.getheader("Content-Length")
        self._declared = (
            int(length) if length is not None and length.isascii() and length.isdigit() else None
        )
        self._received = 0

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes of the body (what one receive brings); b"" at its end.
        TransportError when the transfer stalls (no byte within the read timeout) or breaks
        (closed early, bad chunking); every byte returned before stays valid."""
        raw = self._raw
        try:
            data = raw.read1(n)
            if not raw.chunked and raw.length == 0 and not raw.isclosed():
                raw.read()  # marks the body done, so the connection can carry the next request
        except TimeoutError as e:
            self._abandon()
            raise TransportError(
                "transfer stalled (no data within the stall timeout)", timed_out=True
            ) from e
        except (OSError, HTTPException) as e:
            self._abandon()
            raise TransportError(f"transfer broke: {_describe(e)}") from e
        self._received += len(data)
        if not data and n and self._declared is not None and self._received < self._declared:
            self._abandon()
            raise TransportError(
                f"transfer broke: connection closed after {self._received} of "
                f"{self._declared} bytes"
            )
        return data

    def read_all(self, limit: int, *, within: float | None = None) -> bytes:
        """The body, reading at most ``limit + 1`` bytes (so a caller can tell it was larger).

        With ``within`` (seconds) the whole body must arrive in that time: a server
        dripping bytes slower than that gets TransportError (``timed_out``), not a wait for
        as long as each byte comes before the read timeout.
        """
        deadline = None if within is None else time.monotonic() + within
        parts: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = self.read(min(64 * 1024, limit + 1 - size))
            if not chunk:
                break
            parts.append(chunk)
            size += len(chunk)
            if deadline is not None and time.monotonic() > deadline:
                self._abandon()
                raise TransportError(
                    f"body not complete within {within:g}s ({size} bytes)", timed_out=True
                )
        return b"".join(parts)

    def close(self) -> None:
        """Release the connection: kept for the next request when the body was read to its
        end and the server keeps it open, closed otherwise."""
        if not self._raw.isclosed():
            self._abandon()  # unread body: the connection cannot carry another request

    def _abandon(self) -> None:
        with contextlib.suppress(OSError):
            self._raw.close()
        self._client.discard()

    def __enter__(self) -> Response:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class HttpClient:
    """Requests over one kept-alive connection at a time (not thread-safe: one per thread)."""

    def __init__(
        self,
        *,
        connect_timeout: float,
        read_timeout: float,
        proxies_from_env: bool = True,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.proxies_from_env = proxies_from_env
        self._conn: HTTPConnection | None = None
        self._conn_key: tuple[str, str, int, str | None] | None = None

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> Response:
        """Send one request and return its answer once the status line and headers arrived.

        TransportError (``connected`` False) when no connection could be made, and
        (``timed_out``) when the server did not answer within the read timeout.
        """
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        try:
            explicit_port = parts.port
        except ValueError:  # a port that is not a number, or out of range
            explicit_port = -1
        if scheme not in ("http", "https") or not parts.hostname or explicit_port == -1:
            raise TransportError(f"not an http(s) URL: {url!r}", connected=False)
        host = parts.hostname
        port = explicit_port or (443 if scheme == "https" else 80)
        proxy = proxy_for(scheme, host) if self.proxies_from_env else None
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        send_headers = {"Accept-Encoding": "identity", "User-Agent": "agent-runtime"}
        send_headers.update(headers or {})
        if proxy is not None and scheme == "http":
            target = url.split("#", 1)[0]  # a plain-http proxy takes the absolute URL
            auth = _proxy_auth(proxy)
            if auth is not None:
                send_headers["Proxy-Authorization"] = auth
        reused = self._connection(scheme, host, port, proxy)
        try:
            return self._send(method, url, target, send_headers, body)
        except _StaleConnectionError:
            if not reused:
                raise TransportError("connection closed without an answer") from None
        # the kept-alive connection had been closed by the server: once more on a new one
        self._connection(scheme, host, port, proxy)
        try:
            return self._send(method, url, target, send_headers, body)
        except _StaleConnectionError:
            raise TransportError("connection closed without an answer") from None

    def discard(self) -> None:
        """Close the current connection (the next request opens a new one)."""
        conn, self._conn, self._conn_key = self._conn, None, None
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.close()

    def close(self) -> None:
        """Close the kept-alive connection."""
        self.discard()

    # -- internals ------------------------------------------------------------------------

    def _connection(self, scheme: str, host: str, port: int, proxy: str | None) -> bool:
        """Make ``self._conn`` a connected connection for the target; True when reused."""
        key = (scheme, host, port, proxy)
        if self._conn is not None and self._conn_key == key and _alive(self._conn):
            return True
        self.discard()
        conn: HTTPConnection
        p_host, p_port = "", 0
        if proxy is None:
            conn = (
                HTTPSConnection(host, port, timeout=self.connect_timeout, context=tls_context())
                if scheme == "https"
                else HTTPConnection(host, port, timeout=self.connect_timeout)
            )
        else:
            p = urlsplit(proxy)
            p_host, p_port = p.hostname or "", p.port or 8080
            if scheme == "https":
                conn = HTTPSConnection(
                    p_host, p_port, timeout=self.connect_timeout, context=tls_context()
                )
                auth = _proxy_auth(proxy)
                conn.set_tunnel(host, port, {"Proxy-Authorization": auth} if auth else None)
            else:
                conn = HTTPConnection(p_host, p_port, timeout=self.connect_timeout)
        via = f" (via proxy {p_host}:{p_port})" if proxy else ""
        try:
            conn.connect()
        except TimeoutError as e:
            conn.close()
            raise TransportError(
                f"connection timed out{via}", connected=False, timed_out=True
            ) from e
        except (OSError, HTTPException) as e:
            conn.close()
            raise TransportError(f"{_describe(e)}{via}", connected=False) from e
        if conn.sock is not None:
            conn.sock.settimeout(self.read_timeout)
        self._conn, self._conn_key = conn, key
        return False

    def _send(
        self, method: str, url: str, target: str, headers: dict[str, str], body: bytes | None
    ) -> Response:
        conn = self._conn
        assert conn is not None
        try:
            conn.request(method, target, body=body, headers=headers)
        except (BrokenPipeError, ConnectionResetError) as e:
            self.discard()
            raise _StaleConnectionError from e
        except TimeoutError as e:
            self.discard()
            raise TransportError("sending timed out", timed_out=True) from e
        except (OSError, HTTPException) as e:
            self.discard()
            raise TransportError(_describe(e)) from e
        try:
            raw = conn.getresponse()
        except TimeoutError as e:
            self.discard()
            raise TransportError("no answer within the timeout", timed_out=True) from e
        except ConnectionResetError as e:  # includes RemoteDisconnected: closed, no answer
            self.discard()
            raise _StaleConnectionError from e
        except (OSError, HTTPException) as e:
            self.discard()
            raise TransportError(_describe(e)) from e
        if raw.will_close:
            self._conn, self._conn_key = None, None  # the response owns the socket now
        return Response(self, raw, method, url)


class _StaleConnectionError(Exception):
    """The connection was closed before the server answered (safe to send once more)."""


def _alive(conn: HTTPConnection) -> bool:
    """False when the server closed the kept-alive connection (readable means EOF or junk)."""
    sock = conn.sock
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable


def _proxy_auth(proxy: str) -> str | None:
    p = urlsplit(proxy)
    if p.username is None:
        return None
    cred = f"{unquote(p.username)}:{unquote(p.password or '')}".encode()
    return "Basic " + base64.b64encode(cred).decode()


def _describe(e: BaseException) -> str:
    """A short reason: "connection refused", "certificate verify failed: ...", ..."""
    ssl = sys.modules.get("ssl")  # not imported: cannot be a TLS error (and stays unloaded)
    if ssl is not None and isinstance(e, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {e.verify_message or e.reason}"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, ConnectionResetError):
        return "connection reset by peer"
    if isinstance(e, socket.gaierror):
        return f"name or service not known ({e.strerror or e})"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror.lower()
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
