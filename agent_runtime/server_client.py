"""The device side of the engine server's device API (``states.protocol``), over HTTP.

Every request is bounded by a timeout. Failures map to the runtime's error
classes: ``ServerUnavailableError`` (unreachable, timed out, 429 or 5xx; with
the server's Retry-After), ``ServerAuthError`` (401/403), and
``ServerProtocolError`` (another 4xx, or an answer that is not the expected
message).
"""

from __future__ import annotations

import email.utils
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import quote

from pydantic import BaseModel, ValidationError

from agent_runtime._http import HttpClient
from agent_runtime.errors import (
    ServerAuthError,
    ServerProtocolError,
    ServerUnavailableError,
    TransportError,
)
from fleetbase.platform import Platform
from states.protocol import (
    API_PREFIX,
    CheckinRequest,
    CheckinResponse,
    EnrollRequest,
    EnrollResponse,
    EventBatch,
    Heartbeat,
    StepEvent,
)

__all__ = ["ServerClient", "parse_retry_after"]

_M = TypeVar("_M", bound=BaseModel)

#: Longest Retry-After honoured; a server asking for more is asked again after this.
MAX_RETRY_AFTER = 3600.0
#: Largest answer read from the server (a check-in answer is a few kilobytes).
MAX_RESPONSE_BYTES = 4 * 1024 * 1024


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delay-seconds or HTTP-date); None if absent
    or unparsable. Capped at an hour, never negative."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


class ServerClient:
    """One device's connection to ``engine serve`` (not thread-safe: one per thread)."""

    def __init__(
        self,
        url: str,
        device: str,
        *,
        token: str | None = None,
        timeout: float = 10.0,
        http: HttpClient | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.device = device
        self.token = token
        self.timeout = timeout
        self.http = http or HttpClient(connect_timeout=timeout, read_timeout=timeout)

    # -- endpoints ------------------------------------------------------------------------

    def enroll(
        self,
        platform: Platform,
        secret: str | None = None,
        runtime_version: str | None = None,
        *,
        invite_code: str | None = None,
        device_key: str | None = None,
    ) -> EnrollResponse:
        """Trade the invite code or the enrollment secret for this device's token (also kept
        in ``self.token``); ServerAuthError (403) for a wrong, used or expired code."""
        body = EnrollRequest(
            device=self.device,
            platform=platform,
            enrollment_secret=None if invite_code is not None else secret,
            invite_code=invite_code,
            device_key=device_key,
            runtime_version=runtime_version,
        )
        answer = self._parse(
            EnrollResponse, self._request("POST", f"{API_PREFIX}/enroll", body, auth=False)
        )
        self.token = answer.token
        return answer

    def checkin(self, report: CheckinRequest) -> CheckinResponse:
        """Report this device and receive its plan (or none) and the next poll interval."""
        return self._parse(
            CheckinResponse, self._request("POST", self._device_path("checkin"), report)
        )

    def post_events(self, events: Sequence[StepEvent]) -> None:
        """Send step events (at most 100, the protocol's batch limit)."""
        if events:
            self._request("POST", self._device_path("events"), EventBatch(events=list(events)))

    def post_heartbeat(self, beat: Heartbeat) -> None:
        """Forward the agent's heartbeat."""
        self._request("POST", self._device_path("heartbeat"), beat)

    def get_heartbeat(self) -> Heartbeat | None:
        """The server's record of this device's last heartbeat; None when it has none."""
        try:
            resp = self._request("GET", self._device_path("heartbeat"))
        except ServerProtocolError as e:
            if e.status == 404:
                return None
            raise
        return self._parse(Heartbeat, resp)

    def release_versions(self) -> list[str]:
        """The versions of every release the server serves (``GET /v1/releases``)."""
        resp = self._request("GET", f"{API_PREFIX}/releases", auth=False)
        try:
            data: Any = json.loads(resp.content)
            return [str(r["version"]) for r in data["releases"]]
        except (ValueError, KeyError, TypeError) as e:
            raise ServerProtocolError(
                f"GET {resp.url}: not a release list: {e}", resp.status
            ) from e

    def release_files(self, version: str) -> tuple[bytes, bytes]:
        """The signed manifest bytes of ``version`` and its detached signature."""
        base = f"{API_PREFIX}/releases/{quote(version, safe='')}"
        manifest = self._request("GET", f"{base}/manifest", auth=False).content
        return manifest, self._request("GET", f"{base}/signature", auth=False).content

    def download(self, path: str, limit: int) -> bytes:
        """The bytes of a public file the server serves (a runtime release's bundle), at
        most ``limit`` bytes (ServerProtocolError beyond)."""
        url = self.absolute(path)
        try:
            with self.http.request("GET", url, headers={}, body=None) as resp:
                status = resp.status
                content = resp.read_all(limit, within=max(self.timeout, 60.0))
        except TransportError as e:
            raise ServerUnavailableError(f"GET {url}: {e}") from e
        if status >= 300:
            raise ServerProtocolError(f"GET {url}: HTTP {status}", status)
        if len(content) > limit:
            raise ServerProtocolError(f"GET {url}: larger than {limit} bytes", status)
        return content

    def absolute(self, location: str) -> str:
        """A server path (``/v1/...``) as a URL on this server; URLs are returned unchanged."""
        if location.startswith(("http://", "https://")):
            return location
        return self.url + "/" + location.lstrip("/")

    def close(self) -> None:
        """Close the kept-alive connection."""
        self.http.close()

    # -- plumbing -------------------------------------------------------------------------

    def _device_path(self, what: str) -> str:
        return f"{API_PREFIX}/devices/{quote(self.device, safe='')}/{what}"

    def _request(
        self, method: str, path: str, body: BaseModel | None = None, *, auth: bool = True
    ) -> _Answer:
        url = self.url + path
        headers = {"Accept": "application/json"}
        if auth:
            if self.token is None:
                raise ServerAuthError(f"{method} {url}: the device has no token (not enrolled)")
            headers["Authorization"] = f"Bearer {self.token}"
        data: bytes | None = None
        if body is not None:
            data = body.model_dump_json(exclude_none=True).encode()
            headers["Content-Type"] = "application/json"
        try:
            with self.http.request(method, url, headers=headers, body=data) as resp:
                answer = _Answer(
                    method, url, resp.status, resp.headers.get("Retry-After"),
                    resp.read_all(MAX_RESPONSE_BYTES, within=self.timeout),
                )  # fmt: skip
        except TransportError as e:
            if e.timed_out:
                raise ServerUnavailableError(
                    f"{method} {url}: no answer within {self.timeout:g}s"
                ) from e
            raise ServerUnavailableError(f"{method} {url}: cannot connect: {e}") from e
        status = answer.status
        if status < 300:
            return answer
        detail = _detail(answer.content)
        message = f"{method} {url}: HTTP {status}{': ' + detail if detail else ''}"
        if status == 429 or status >= 500:
            raise ServerUnavailableError(message, status, parse_retry_after(answer.retry_after))
        if status in (401, 403):
            raise ServerAuthError(message, status, _code(answer.content))
        raise ServerProtocolError(message, status)

    def _parse(self, model: type[_M], resp: _Answer) -> _M:
        where = f"{resp.method} {resp.url}"
        if len(resp.content) > MAX_RESPONSE_BYTES:
            raise ServerProtocolError(f"{where}: answer exceeds {MAX_RESPONSE_BYTES} bytes")
        try:
            return model.model_validate_json(resp.content)
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(p) for p in err["loc"]) or "(body)"
            raise ServerProtocolError(
                f"{where}: not a {model.__name__}: {loc}: {err['msg']}", resp.status
            ) from e


@dataclass(frozen=True)
class _Answer:
    """A server answer read whole (at most MAX_RESPONSE_BYTES + 1 bytes)."""

    method: str
    url: str
    status: int
    retry_after: str | None
    content: bytes


def _code(content: bytes) -> str | None:
    """The server's machine-readable refusal code (``{"code": ...}``), if any."""
    try:
        data: Any = json.loads(content[:2000])
    except ValueError:
        return None
    code = data.get("code") if isinstance(data, dict) else None
    return code[:50] if isinstance(code, str) else None


def _detail(content: bytes) -> str:
    """The server's error message, from a JSON ``detail`` when there is one."""
    text = content[:500].decode("utf-8", errors="replace")
    try:
        data: Any = json.loads(text)
    except ValueError:
        return text.strip()
    if isinstance(data, dict) and "detail" in data:
        return str(data["detail"])[:500]
    return text.strip()
