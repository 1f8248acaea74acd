"""Health checks against real example-agent processes and a real local HTTP server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from agent_runtime.clock import SystemClock
from agent_runtime.health import Health, read_heartbeat
from agent_runtime.services import ProcessManager
from fleetbase.version import Version
from states.manifest import HealthCheck, HealthCheckKind
from tests.runtime_services.conftest import install_release

CLOCK = SystemClock()


def heartbeat_check(timeout: float = 10.0, max_age: float = 5.0) -> HealthCheck:
    """A heartbeat_file check on the example agent's default file."""
    return HealthCheck(
        kind=HealthCheckKind.HEARTBEAT_FILE,
        path="heartbeat.json",
        timeout=timedelta(seconds=timeout),
        max_age=timedelta(seconds=max_age),
    )


def probe(manager: ProcessManager, agent_dir: Path) -> Health:
    """A fast-polling probe."""
    return Health(manager, agent_dir, poll_interval=0.05)


def test_heartbeat_of_running_good_release_is_healthy(
    tmp_path: Path, process_manager: ProcessManager
) -> None:
    """3.0.1 heartbeats after the restart: healthy for expected 3.0.1."""
    run = install_release("3.0.1", tmp_path / "agent")
    since = CLOCK.now()
    process_manager.restart(run)
    result = probe(process_manager, run.cwd).wait_healthy(
        heartbeat_check(), Version("3.0.1"), since, CLOCK
    )
    assert result.healthy, result.detail
    assert "3.0.1" in result.detail


def test_heartbeat_naming_another_version_is_unhealthy(
    tmp_path: Path, process_manager: ProcessManager
) -> None:
    """A heartbeat from 3.0.1 does not prove 3.0.2 alive; the detail names both versions."""
    run = install_release("3.0.1", tmp_path / "agent")
    since = CLOCK.now()
    process_manager.restart(run)
    result = probe(process_manager, run.cwd).wait_healthy(
        heartbeat_check(timeout=1.0), Version("3.0.2"), since, CLOCK
    )
    assert not result.healthy
    assert result.detail == "heartbeat says 3.0.1, expected 3.0.2 after 1s"


def test_release_that_never_beats_is_unhealthy(
    tmp_path: Path, process_manager: ProcessManager
) -> None:
    """3.0.3 runs but writes no heartbeat: unhealthy after the timeout, no heartbeat file."""
    run = install_release("3.0.3", tmp_path / "agent")
    since = CLOCK.now()
    process_manager.restart(run)
    result = probe(process_manager, run.cwd).wait_healthy(
        heartbeat_check(timeout=1.0), Version("3.0.3"), since, CLOCK
    )
    assert not result.healthy
    assert result.detail == f"no heartbeat file {run.cwd / 'heartbeat.json'} after 1s"
    assert process_manager.is_running()


def test_heartbeat_from_before_the_restart_is_stale(
    tmp_path: Path, process_manager: ProcessManager
) -> None:
    """A heartbeat older than `since` (left by a stopped agent) does not count."""
    run = install_release("3.0.1", tmp_path / "agent")
    process_manager.restart(run)
    health = probe(process_manager, run.cwd)
    assert health.wait_healthy(heartbeat_check(), Version("3.0.1"), CLOCK.now(), CLOCK).healthy
    process_manager.stop()
    since = CLOCK.now()
    later = Health(ProcessManager(tmp_path / "other-state"), run.cwd, poll_interval=0.05)
    result = later.wait_healthy(heartbeat_check(timeout=0.5), Version("3.0.1"), since, CLOCK)
    assert not result.healthy
    assert "is from before the restart" in result.detail


def test_heartbeat_older_than_max_age_is_stale(
    tmp_path: Path, process_manager: ProcessManager
) -> None:
    """A heartbeat newer than `since` but older than max_age does not count."""
    written = CLOCK.now() - timedelta(seconds=60)
    beat = {"version": "3.0.1", "pid": 1, "time": written.isoformat()}
    (tmp_path / "heartbeat.json").write_text(json.dumps(beat))
    since = written - timedelta(seconds=1)
    result = probe(process_manager, tmp_path).wait_healthy(
        heartbeat_check(timeout=0.3, max_age=30), Version("3.0.1"), since, CLOCK
    )
    assert not result.healthy
    assert "old (max_age 30s)" in result.detail


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("{half", "not JSON"),
        ('["3.0.1"]', "not a JSON object"),
        ('{"version": "3.0.1"}', "needs string fields"),
        ('{"version": "3.0.1", "time": "2030-01-01T00:00:00"}', "has no time zone"),
    ],
)
def test_malformed_heartbeat_is_unhealthy_with_reason(
    tmp_path: Path, process_manager: ProcessManager, content: str, why: str
) -> None:
    """A heartbeat file that is not a heartbeat gives an unhealthy result naming the problem."""
    (tmp_path / "heartbeat.json").write_text(content)
    result = probe(process_manager, tmp_path).wait_healthy(
        heartbeat_check(timeout=0.2), Version("3.0.1"), CLOCK.now(), CLOCK
    )
    assert not result.healthy
    assert why in result.detail


def test_read_heartbeat_parses_the_agents_file(tmp_path: Path) -> None:
    """read_heartbeat returns version and aware time of the agent's JSON."""
    (tmp_path / "hb").write_text('{"version": "3.0.1", "pid": 7, "time": "2030-01-01T00:00:00Z"}')
    assert read_heartbeat(tmp_path / "hb") == ("3.0.1", datetime(2030, 1, 1, tzinfo=UTC))


def test_agent_exiting_at_start_fails_fast_with_exit_code(
    tmp_path: Path, process_manager: ProcessManager
) -> None:
    """3.0.2 exits with code 3: heartbeat check reports the exit instead of waiting 30s."""
    run = install_release("3.0.2", tmp_path / "agent")
    since = CLOCK.now()
    process_manager.restart(run)
    start = CLOCK.monotonic()
    result = probe(process_manager, run.cwd).wait_healthy(
        heartbeat_check(timeout=30), Version("3.0.2"), since, CLOCK
    )
    assert not result.healthy
    assert result.detail.startswith("process exited with code 3 after ")
    assert CLOCK.monotonic() - start < 30


def test_process_check_reports_exit_code(tmp_path: Path, process_manager: ProcessManager) -> None:
    """process kind: 3.0.2 exits with code 3, reported as such."""
    run = install_release("3.0.2", tmp_path / "agent")
    since = CLOCK.now()
    process_manager.restart(run)
    check = HealthCheck(
        kind=HealthCheckKind.PROCESS,
        timeout=timedelta(seconds=10),
        stable_for=timedelta(seconds=1),
    )
    result = probe(process_manager, run.cwd).wait_healthy(check, Version("3.0.2"), since, CLOCK)
    assert not result.healthy
    assert result.detail.startswith("process exited with code 3 after ")
    assert "cannot start" in process_manager.log_file.read_text()


def test_process_check_passes_when_stable(tmp_path: Path, process_manager: ProcessManager) -> None:
    """process kind: an agent that stays up for stable_for is healthy."""
    run = install_release("3.0.3", tmp_path / "agent")
    since = CLOCK.now()
    process_manager.restart(run)
    check = HealthCheck(
        kind=HealthCheckKind.PROCESS,
        timeout=timedelta(seconds=10),
        stable_for=timedelta(seconds=0.3),
    )
    result = probe(process_manager, run.cwd).wait_healthy(check, Version("3.0.3"), since, CLOCK)
    assert result.healthy, result.detail


def test_process_check_when_nothing_runs_times_out(
    tmp_path: Path, process_manager: ProcessManager
) -> None:
    """process kind with no agent at all: unhealthy after the timeout, saying it is not running."""
    check = HealthCheck(
        kind=HealthCheckKind.PROCESS,
        timeout=timedelta(seconds=0.3),
        stable_for=timedelta(seconds=0.1),
    )
    result = probe(process_manager, tmp_path).wait_healthy(
        check, Version("3.0.1"), CLOCK.now(), CLOCK
    )
    assert not result.healthy
    assert result.detail.endswith("is not running")


def test_server_check_is_not_available_on_device(
    tmp_path: Path, process_manager: ProcessManager
) -> None:
    """server kind: unhealthy with a clear reason (needs a server connection)."""
    check = HealthCheck(kind=HealthCheckKind.SERVER)
    result = probe(process_manager, tmp_path).wait_healthy(
        check, Version("3.0.1"), CLOCK.now(), CLOCK
    )
    assert result == type(result)(False, "server health checks need a server connection")


# -- http -----------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, str]] = {}

    def do_GET(self) -> None:
        status, body = self.routes.get(self.path, (404, "not found"))
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def http_base() -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 with a few canned health endpoints."""
    _Handler.routes = {
        "/json": (200, json.dumps({"version": "3.0.1", "status": "ok"})),
        "/text": (200, "wegweiser agent 3.0.1 up"),
        "/text10": (200, "wegweiser agent 3.0.10 up"),
        "/down": (503, "starting"),
    }
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("route", "expected", "healthy", "detail"),
    [
        ("/json", "3.0.1", True, "reports version 3.0.1"),
        ("/json", "3.0.2", False, "reports version 3.0.1, expected 3.0.2"),
        ("/text", "3.0.1", True, "names version 3.0.1"),
        ("/text10", "3.0.1", False, "without naming version 3.0.1"),
        ("/down", "3.0.1", False, "answered 503"),
        ("/missing", "3.0.1", False, "answered 404"),
    ],
)
def test_http_check(
    tmp_path: Path,
    process_manager: ProcessManager,
    http_base: str,
    route: str,
    expected: str,
    healthy: bool,
    detail: str,
) -> None:
    """http kind: 200 with the expected version (JSON or text) is healthy, anything else not."""
    check = HealthCheck(kind=HealthCheckKind.HTTP, url=http_base + route, timeout=timedelta(0))
    result = probe(process_manager, tmp_path).wait_healthy(
        check, Version(expected), CLOCK.now(), CLOCK
    )
    assert result.healthy is healthy
    assert detail in result.detail


def test_http_check_connection_refused_is_unhealthy(
    tmp_path: Path, process_manager: ProcessManager
) -> None:
    """http kind: nothing listening is unhealthy (connection error), not an exception."""
    check = HealthCheck(
        kind=HealthCheckKind.HTTP, url="http://127.0.0.1:9/health", timeout=timedelta(seconds=0.2)
    )
    result = probe(process_manager, tmp_path).wait_healthy(
        check, Version("3.0.1"), CLOCK.now(), CLOCK
    )
    assert not result.healthy
    assert "connection refused" in result.detail


def test_http_check_refuses_non_loopback_url(
    tmp_path: Path, process_manager: ProcessManager
) -> None:
    """http kind: a URL outside loopback is refused without a request."""
    check = HealthCheck(
        kind=HealthCheckKind.HTTP, url="http://192.0.2.1/health", timeout=timedelta(0)
    )
    result = probe(process_manager, tmp_path).wait_healthy(
        check, Version("3.0.1"), CLOCK.now(), CLOCK
    )
    assert not result.healthy
    assert "only loopback" in result.detail
