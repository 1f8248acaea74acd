"""The engine speaking for agentless devices to `engine serve`'s device API.

Each SSH device is enrolled like any device (the fleet's enrollment secret,
token kept 0600 under ``.engine/ssh/tokens``) and checks in through the same
endpoint pull-mode runtimes use, so the server's check-in handler and rollout
controller see no difference.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import requests
from pydantic import ValidationError

from engine.ssh.errors import SshError
from fleetbase.platform import Platform
from states.protocol import (
    CheckinRequest,
    CheckinResponse,
    EnrollRequest,
    EnrollResponse,
    EventBatch,
    StepEvent,
)

__all__ = ["EVENT_BATCH", "DeviceApiClient", "DeviceApiError"]

#: Events per request: the protocol's limit (``EventBatch.events``).
EVENT_BATCH = 100


class DeviceApiError(SshError):
    """`engine serve` refused or could not answer a request made for a device."""

    kind = "server"


class DeviceApiClient:
    """Enrolls, checks in and downloads release files for devices reached over SSH."""

    def __init__(
        self, url: str, enrollment_secret: str, tokens_dir: Path, *, timeout: float = 10.0
    ) -> None:
        """Talk to the server at ``url``; tokens are kept in ``tokens_dir``."""
        self.url = url.rstrip("/")
        self.secret = enrollment_secret
        self.tokens_dir = tokens_dir
        self.timeout = timeout
        self._http = threading.local()
        self._cache_lock = threading.Lock()

    @property
    def _session(self) -> requests.Session:
        s: requests.Session | None = getattr(self._http, "session", None)
        if s is None:
            s = self._http.session = requests.Session()
        return s

    def _request(self, method: str, path: str, **kw: object) -> requests.Response:
        try:
            return self._session.request(method, self.url + path, timeout=self.timeout, **kw)  # type: ignore[arg-type]
        except requests.RequestException as e:
            raise DeviceApiError(f"engine serve at {self.url} cannot be reached: {e}") from e

    def _token_file(self, device: str) -> Path:
        return self.tokens_dir / device

    def _enroll(self, device: str, platform: Platform) -> str:
        body = EnrollRequest(device=device, platform=platform, enrollment_secret=self.secret)
        resp = self._request("POST", "/v1/enroll", data=body.model_dump_json())
        if resp.status_code != 200:
            raise DeviceApiError(f"{device}: enrollment refused: {_detail(resp)}")
        token = EnrollResponse.model_validate_json(resp.content).token
        self.tokens_dir.mkdir(parents=True, exist_ok=True)
        path = self._token_file(device)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token)
        return token

    def _post(self, device: str, platform: Platform, path: str, body: str) -> requests.Response:
        """POST ``body`` to a device endpoint with its token (enrolling first if needed, and
        again once when the server forgot the token)."""
        file = self._token_file(device)
        token = file.read_text().strip() if file.is_file() else None
        for attempt in (1, 2):
            if token is None:
                token = self._enroll(device, platform)
            resp = self._request(
                "POST", path, data=body, headers={"Authorization": f"Bearer {token}"}
            )
            if resp.status_code == 401 and attempt == 1:
                token = None  # the server forgot the token: enroll again
                continue
            return resp
        raise AssertionError("unreachable")

    def checkin(self, device: str, request: CheckinRequest) -> CheckinResponse:
        """Send ``request`` as ``device``'s check-in (enrolling first if needed); the answer."""
        resp = self._post(device, request.platform, f"/v1/devices/{device}/checkin",
                          request.model_dump_json())  # fmt: skip
        if resp.status_code != 200:
            raise DeviceApiError(f"{device}: check-in refused: {_detail(resp)}")
        try:
            return CheckinResponse.model_validate_json(resp.content)
        except ValidationError as e:
            raise DeviceApiError(f"{device}: the check-in answer is not understood: {e}") from e

    def post_events(self, device: str, platform: Platform, events: list[StepEvent]) -> None:
        """Send ``device``'s step events, as pull-mode runtimes send theirs (batches of 100)."""
        for start in range(0, len(events), EVENT_BATCH):
            batch = EventBatch(events=events[start : start + EVENT_BATCH])
            resp = self._post(device, platform, f"/v1/devices/{device}/events",
                              batch.model_dump_json())  # fmt: skip
            if resp.status_code not in (200, 204):
                raise DeviceApiError(f"{device}: step events refused: {_detail(resp)}")

    def download(self, path: str, dest: Path, sha256: str | None = None) -> Path:
        """The server file at ``path`` (e.g. /v1/artifacts/<sha256>), cached at ``dest``."""
        with self._cache_lock:
            if dest.is_file() and (sha256 is None or _sha256(dest) == sha256):
                return dest
        resp = self._request("GET", path)
        if resp.status_code != 200:
            raise DeviceApiError(f"GET {path}: {_detail(resp)}")
        if sha256 is not None and hashlib.sha256(resp.content).hexdigest() != sha256:
            raise DeviceApiError(f"GET {path}: the bytes do not hash to {sha256}")
        with self._cache_lock:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(dest.name + f".{threading.get_ident()}.tmp")
            tmp.write_bytes(resp.content)
            tmp.replace(dest)
        return dest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _detail(resp: requests.Response) -> str:
    try:
        detail = resp.json().get("detail")
    except ValueError:
        detail = None
    return f"HTTP {resp.status_code}" + (f": {detail}" if detail else "")
