"""Health checks that prove a given agent version alive after a restart.

Kinds (``states.manifest.HealthCheckKind``):

``heartbeat_file``
    The agent writes JSON ``{"version": "3.0.1", "pid": 123, "time": "<ISO 8601 UTC>"}``
    atomically to a file. ``check.path`` is relative to ``agent_dir``, the
    directory the agent runs in (``RunSpec.cwd``). Healthy when the file names
    the expected version, its time is after ``since`` and at most ``max_age``
    old.
``http``
    GET ``check.url`` (loopback hosts only); healthy on status 200 with a JSON
    body whose ``version`` is the expected one, or a text body naming it.
``process``
    The service manager reports the agent running without interruption for
    ``stable_for``.
``server``
    Needs a server connection: in pull mode ``agent_runtime.server_health.ServerHealth``
    answers it from the server's record of the agent's heartbeat; this local
    probe reports it unhealthy.

Every check polls with the injected clock until it passes or ``check.timeout``
elapses, and answers with a ``HealthResult`` naming the reason; an unhealthy
agent is never an exception.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Protocol, runtime_checkable
from urllib.parse import urlsplit

from agent_runtime.effects import Clock, HealthResult, ServiceManager
from agent_runtime.errors import HealthCheckError, TransportError
from agent_runtime.heartbeat_judge import (
    Source,
    judge_heartbeat,
    poll_until_healthy,
    same_version,
)
from agent_runtime.services.process import ProcessExit
from fleetbase.duration import format_duration
from fleetbase.version import Version
from states.manifest import HealthCheck, HealthCheckKind

__all__ = ["ExitReporter", "Health", "exit_detail", "read_heartbeat"]

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
#: Longest single HTTP request of an http check (connect, read).
HTTP_TIMEOUT = 2.0
#: Largest body of an http check that is looked at.
MAX_BODY = 64 * 1024


@runtime_checkable
class ExitReporter(Protocol):
    """A service manager that knows when and how the agent it started exited."""

    def last_exit(self) -> ProcessExit | None:
        """How the agent last ended; None while it runs or when unknown."""
        ...


def exit_detail(service: ServiceManager) -> str | None:
    """How the agent ended when ``service`` saw it end; None while it runs or when unknown."""
    if isinstance(service, ExitReporter) and not service.is_running():
        ended = service.last_exit()
        if ended is not None:
            return f"process {ended.describe()}"
    return None


def read_heartbeat(path: Path) -> tuple[str, datetime]:
    """Read ``(version, time)`` from a heartbeat file.

    Raises FileNotFoundError when it is missing and ValueError when it is not a
    heartbeat (bad JSON, missing or malformed fields, a time without zone).
    """
    raw = path.read_bytes()
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise ValueError(f"not JSON ({e})") from e
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    version, stamp = data.get("version"), data.get("time")
    if not isinstance(version, str) or not isinstance(stamp, str):
        raise ValueError("needs string fields 'version' and 'time'")
    when = datetime.fromisoformat(stamp)
    if when.tzinfo is None:
        raise ValueError(f"time {stamp!r} has no time zone")
    return version, when


def _names_version(body: str, version: str) -> bool:
    """True when ``version`` appears in ``body`` as a whole version (3.0.1 is not in 3.0.10)."""
    pattern = rf"(?<![0-9A-Za-z.+-]){re.escape(version)}(?![0-9A-Za-z+-]|\.[0-9A-Za-z])"
    return re.search(pattern, body) is not None


#: How the heartbeat file's details name it.
FILE = Source(heartbeat="heartbeat", last="last heartbeat")


class Health:
    """Implements ``effects.HealthProbe`` for one device's agent."""

    def __init__(
        self,
        service: ServiceManager,
        agent_dir: Path,
        *,
        poll_interval: float = 0.5,
    ) -> None:
        self.service = service
        self.agent_dir = agent_dir
        self.poll_interval = poll_interval

    def wait_healthy(
        self, check: HealthCheck, expected: Version, since: datetime, clock: Clock
    ) -> HealthResult:
        """Poll until ``check`` passes for ``expected`` with evidence newer than ``since``,
        or ``check.timeout`` passes; the result says why it failed.

        Raises HealthCheckError only for a check missing its url/path (which
        ``HealthCheck`` validation already refuses).
        """
        if check.kind is HealthCheckKind.SERVER:
            return HealthResult(False, "server health checks need a server connection")
        if check.kind is HealthCheckKind.NATS:
            return HealthResult(
                False, "the nats health check needs a NATS connection: add server.nats "
                "to the device config and run the runtime in pull mode",
            )  # fmt: skip
        if check.kind is HealthCheckKind.PROCESS:
            return self._wait_stable(check, clock)
        if check.kind is HealthCheckKind.HTTP:
            url = check.url
            if url is None:
                raise HealthCheckError("an http health check needs 'url'")
            return self._poll(check, clock, lambda: self._http_once(url, expected))
        if check.path is None:
            raise HealthCheckError("a heartbeat_file health check needs 'path'")
        path = self.agent_dir / check.path
        return self._poll(
            check, clock, lambda: self._heartbeat_once(path, check, expected, since, clock)
        )

    # -- polling --------------------------------------------------------------------

    def _exited(self) -> str | None:
        return exit_detail(self.service)

    def _poll(
        self, check: HealthCheck, clock: Clock, once: Callable[[], HealthResult]
    ) -> HealthResult:
        return poll_until_healthy(
            check.timeout, clock, once, poll_interval=self.poll_interval, exited=self._exited
        )

    def _wait_stable(self, check: HealthCheck, clock: Clock) -> HealthResult:
        timeout = check.timeout.total_seconds()
        need = check.stable_for.total_seconds()
        start = clock.monotonic()
        up_since: float | None = None
        interruptions = 0
        while True:
            now = clock.monotonic()
            if self.service.is_running():
                if up_since is None:
                    up_since = now
                if now - up_since >= need:
                    return HealthResult(True, f"process running for {now - up_since:.1f}s")
            else:
                if up_since is not None:
                    interruptions += 1
                up_since = None
                exited = self._exited()
                if exited is not None:
                    return HealthResult(False, f"{exited} after {now - start:.1f}s")
            if now - start >= timeout:
                ran = f"ran for {now - up_since:.1f}s" if up_since is not None else "is not running"
                again = f", stopped {interruptions} time(s)" if interruptions else ""
                return HealthResult(
                    False,
                    f"process not stable for {format_duration(check.stable_for)} within "
                    f"{format_duration(check.timeout)}: {ran}{again}",
                )
            clock.sleep(min(self.poll_interval, max(timeout - (now - start), 0.0)))

    # -- single attempts ------------------------------------------------------------

    def _heartbeat_once(
        self, path: Path, check: HealthCheck, expected: Version, since: datetime, clock: Clock
    ) -> HealthResult:
        try:
            version, when = read_heartbeat(path)
        except FileNotFoundError:
            return HealthResult(False, f"no heartbeat file {path}")
        except (OSError, ValueError) as e:
            return HealthResult(False, f"heartbeat file {path} is unreadable: {e}")
        wrong = judge_heartbeat(
            FILE, version, when, expected=expected, since=since, now=clock.now(),
            max_age=check.max_age,
        )  # fmt: skip
        if wrong is not None:
            return HealthResult(False, wrong)
        return HealthResult(True, f"heartbeat from {expected} at {when.isoformat()}")

    def _http_once(self, url: str, expected: Version) -> HealthResult:
        host = urlsplit(url).hostname or ""
        if urlsplit(url).scheme not in ("http", "https") or host not in LOOPBACK_HOSTS:
            return HealthResult(False, f"refusing health URL {url}: only loopback http(s) URLs")
        try:
            status, body = _loopback_get(url, HTTP_TIMEOUT)
        except TransportError as e:
            return HealthResult(False, f"GET {url} failed: {e}")
        if status != 200:
            return HealthResult(False, f"GET {url} answered {status}")
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("version"), str):
            if same_version(data["version"], expected):
                return HealthResult(True, f"GET {url} reports version {expected}")
            return HealthResult(
                False, f"GET {url} reports version {data['version']}, expected {expected}"
            )
        if _names_version(body, str(expected)):
            return HealthResult(True, f"GET {url} names version {expected}")
        return HealthResult(False, f"GET {url} answered 200 without naming version {expected}")


def _loopback_get(url: str, timeout: float) -> tuple[int, str]:
    """GET without proxies from the environment (a proxy must not answer for localhost):
    the status and the body as text (at most 64 KiB). TransportError when it fails."""
    from agent_runtime._http import HttpClient

    client = HttpClient(connect_timeout=timeout, read_timeout=timeout, proxies_from_env=False)
    try:
        with client.request("GET", url) as resp:
            return resp.status, resp.read_all(MAX_BODY).decode("utf-8", errors="replace")
    finally:
        client.close()
