"""The runtime's HTTP client against real servers on 127.0.0.1: https with certificate checks,
kept-alive connections, proxies, broken transfers, and no `requests` in the process."""

from __future__ import annotations

import contextlib
import hashlib
import os
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from agent_runtime._http import HttpClient, proxy_for
from agent_runtime.config import DownloadSettings
from agent_runtime.errors import DownloadError, ServerUnavailableError, TransportError
from agent_runtime.fetch import Fetcher
from agent_runtime.server_client import ServerClient
from tests.runtime.pki import Pki, make_pki

REPO = Path(__file__).resolve().parents[2]
DATA = bytes(range(256)) * 1024  # 256 KiB
SHA = hashlib.sha256(DATA).hexdigest()
SETTINGS = DownloadSettings(stall_timeout=timedelta(seconds=2), retries=0)
CA_ENV = ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """A test CA and a server certificate for 127.0.0.1."""
    return make_pki(tmp_path / "pki", "runtime test ca")


@pytest.fixture
def no_ca_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No CA variables and no proxy variables from the caller's environment."""
    for name in (*CA_ENV, "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


# -- a small server -------------------------------------------------------------------------


@dataclass
class Server:
    """What the test server saw: request lines, Range headers, connections accepted."""

    port: int = 0
    scheme: str = "http"
    lines: list[str] = field(default_factory=list)
    connections: int = 0
    #: "truncate_chunked": a chunked body that ends without its last chunk
    mode: str = ""

    @property
    def url(self) -> str:
        """Base URL."""
        return f"{self.scheme}://127.0.0.1:{self.port}"


def _handler(srv: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 0.5  # an idle kept-alive connection is closed by the server after this

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def setup(self) -> None:
            srv.connections += 1
            super().setup()

        def do_GET(self) -> None:
            srv.lines.append(self.requestline)
            if srv.mode == "truncate_chunked":
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self.wfile.write(b"10\r\n" + b"x" * 16 + b"\r\n")
                self.wfile.flush()
                self.close_connection = True
                return
            body = DATA if self.path.endswith("/blob") else b'{"poll_interval": 1}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            self.do_GET()

    return Handler


@contextlib.contextmanager
def serve(pki: Pki | None = None, mode: str = "") -> Iterator[Server]:
    """An HTTP (or, with ``pki``, HTTPS) server on a free 127.0.0.1 port."""
    srv = Server(mode=mode)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(srv))
    httpd.daemon_threads = True
    if pki is not None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pki.server_pem)
        httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
        srv.scheme = "https"
    srv.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        httpd.shutdown()
        httpd.server_close()


# -- https ----------------------------------------------------------------------------------


def test_https_download_verifies_against_the_hashed_ca_directory(
    no_ca_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Over https a server certificate signed by a CA in $SSL_CERT_DIR (here: the system's
    CAs plus the test CA) is accepted."""
    capath = ssl.get_default_verify_paths().capath
    pki = make_pki(tmp_path / "pki", "runtime test ca", system_dir=capath)
    no_ca_env.setenv("SSL_CERT_DIR", str(pki.ca_dir))
    dest = tmp_path / "out" / "blob"
    with serve(pki) as srv:
        Fetcher(SETTINGS).fetch(f"{srv.url}/blob", dest, size=len(DATA), sha256=SHA)
    assert dest.read_bytes() == DATA


def test_https_ca_bundle_file_is_honoured(
    pki: Pki, no_ca_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A CA bundle named by $SSL_CERT_FILE is trusted (server check-in over https)."""
    no_ca_env.setenv("SSL_CERT_FILE", str(pki.ca_pem))
    with serve(pki) as srv:
        client = ServerClient(srv.url, "dev-1", token="t", timeout=2)
        assert client.http.request("GET", f"{srv.url}/x").status == 200
        client.close()


def test_untrusted_certificate_is_refused_and_nothing_is_written(
    pki: Pki, no_ca_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A server certificate from a CA the device does not trust fails the download
    (certificate verify failed) and leaves no file behind."""
    other = make_pki(tmp_path / "other", "some other ca")
    no_ca_env.setenv("SSL_CERT_DIR", str(other.ca_dir))
    out = tmp_path / "out"
    with serve(pki) as srv, pytest.raises(DownloadError, match="certificate verify failed") as e:
        Fetcher(SETTINGS).fetch(f"{srv.url}/blob", out / "blob", size=len(DATA), sha256=SHA)
    assert e.value.status is None
    assert list(out.iterdir()) == []
    assert srv.lines == []


def test_wrong_host_name_is_refused(pki: Pki, no_ca_env: pytest.MonkeyPatch) -> None:
    """A trusted certificate for 127.0.0.1 does not pass for the name localhost (host name
    checked): the server client reports it unavailable, naming the certificate."""
    no_ca_env.setenv("SSL_CERT_DIR", str(pki.ca_dir))
    with serve(pki) as srv:
        client = ServerClient(f"https://localhost:{srv.port}", "dev-1", token="t", timeout=2)
        with pytest.raises(ServerUnavailableError, match="certificate verify failed") as e:
            client.get_heartbeat()
    assert e.value.status is None and e.value.retry_after is None
    assert srv.lines == []


# -- connections, proxies, broken transfers -------------------------------------------------


def test_kept_alive_connection_is_reused_and_replaced_after_the_server_closed_it(
    no_ca_env: pytest.MonkeyPatch,
) -> None:
    """Two requests in a row share one connection; after the server closed the idle
    connection the next request succeeds on a new one."""
    import time

    with serve() as srv:
        client = HttpClient(connect_timeout=2, read_timeout=2)
        for _ in range(2):
            with client.request("GET", f"{srv.url}/x") as resp:
                assert resp.read_all(1024) == b'{"poll_interval": 1}'
        assert srv.connections == 1
        time.sleep(1.0)  # longer than the server's idle timeout of 0.5 s
        with client.request("POST", f"{srv.url}/y", body=b"{}") as resp:
            assert resp.status == 200 and resp.read_all(1024)
        client.close()
    assert srv.connections == 2 and len(srv.lines) == 3


def test_plain_http_goes_through_the_environments_proxy(no_ca_env: pytest.MonkeyPatch) -> None:
    """With $HTTP_PROXY set, the request line carries the absolute URL to the proxy; a host
    in $NO_PROXY is asked directly."""
    with serve() as proxy:
        no_ca_env.setenv("HTTP_PROXY", proxy.url)
        no_ca_env.setenv("NO_PROXY", "localhost")
        client = HttpClient(connect_timeout=2, read_timeout=2)
        with client.request("GET", "http://fleet.example:8080/v1/x?a=1") as resp:
            assert resp.status == 200
        client.close()
        assert proxy.lines == ["GET http://fleet.example:8080/v1/x?a=1 HTTP/1.1"]
        with serve() as direct:
            url = f"http://localhost:{direct.port}/z"
            with HttpClient(connect_timeout=2, read_timeout=2).request("GET", url) as resp:
                assert resp.status == 200
            assert direct.lines == ["GET /z HTTP/1.1"]
        assert len(proxy.lines) == 1


@pytest.mark.parametrize(
    ("env", "host", "expected"),
    [
        ({}, "a.example", None),
        ({"HTTPS_PROXY": "proxy:3128"}, "a.example", "http://proxy:3128"),
        ({"https_proxy": "http://p:1", "NO_PROXY": "example"}, "a.example", None),
        ({"https_proxy": "http://p:1", "NO_PROXY": ".example, other"}, "a.example", None),
        ({"https_proxy": "http://p:1", "no_proxy": "*"}, "a.example", None),
        ({"https_proxy": "http://p:1", "NO_PROXY": "ample"}, "a.example", "http://p:1"),
        ({"https_proxy": "http://p:1", "NO_PROXY": "127.0.0.1:8080"}, "127.0.0.1", None),
        ({"HTTP_PROXY": "http://p:1"}, "a.example", None),
    ],
)
def test_proxy_choice(env: dict[str, str], host: str, expected: str | None) -> None:
    """An https URL uses $HTTPS_PROXY unless $NO_PROXY names its host or a parent domain."""
    assert proxy_for("https", host, env) == expected


def test_chunked_body_ending_early_is_a_download_error(tmp_path: Path) -> None:
    """A chunked answer cut off before its last chunk raises DownloadError ("transfer broke")
    and keeps the partial file for a resume."""
    with serve(mode="truncate_chunked") as srv, pytest.raises(DownloadError, match="broke"):
        Fetcher(SETTINGS).fetch(f"{srv.url}/blob", tmp_path / "b", size=len(DATA), sha256=SHA)
    assert (tmp_path / "b.part").read_bytes() == b"x" * 16
    assert not (tmp_path / "b").exists()


def test_not_an_http_url_is_a_transport_error() -> None:
    """Only well-formed http and https URLs are requested."""
    client = HttpClient(connect_timeout=1, read_timeout=1)
    for url in ("ftp://127.0.0.1/x", "http://127.0.0.1:port/x", "http:///x"):
        with pytest.raises(TransportError, match="not an http") as e:
            client.request("GET", url)
        assert e.value.connected is False


def test_runtime_downloads_without_loading_requests(tmp_path: Path) -> None:
    """A download over HTTP loads none of requests, urllib3, charset_normalizer, idna (kept
    out of the runtime to keep its idle memory small)."""
    (tmp_path / "blob").write_bytes(DATA)
    code = (
        "import sys, http.server, threading, functools\n"
        "from datetime import timedelta\n"
        "from pathlib import Path\n"
        "from agent_runtime.config import DownloadSettings\n"
        "from agent_runtime.fetch import Fetcher\n"
        "import agent_runtime.cli, agent_runtime.pull, agent_runtime.health\n"
        "h = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])\n"
        "s = http.server.ThreadingHTTPServer(('127.0.0.1', 0), h)\n"
        "threading.Thread(target=s.serve_forever, daemon=True).start()\n"
        "url = f'http://127.0.0.1:{s.server_address[1]}/blob'\n"
        "Fetcher(DownloadSettings()).fetch(url, Path(sys.argv[1]) / 'copy', size=int(sys.argv[2]),"
        " sha256=sys.argv[3])\n"
        "print(sorted(m for m in ('requests', 'urllib3', 'charset_normalizer', 'idna')"
        " if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_PROXY": "127.0.0.1"}
    run = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path), str(len(DATA)), SHA],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
    assert (tmp_path / "copy").read_bytes() == DATA
