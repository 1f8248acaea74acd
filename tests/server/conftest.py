"""A real `engine serve` on 127.0.0.1 for tests, and an operator repo to serve.

``running_server(repo_dir, state_url, env)`` starts ``python -m engine serve``
with ``--port 0`` (the server prints the port it got), waits for "ready",
reads the admin token and enrollment secret the server generated under
``<repo>/.engine/``, and stops the process with SIGTERM on exit. Other test
packages may import it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_FLEET = REPO_ROOT / "examples" / "fleet"

_READY = re.compile(r"engine serve: ready at (http://\S+)")


@dataclass
class ServerHandle:
    """A running `engine serve`: its URL, credentials, process and collected output."""

    url: str
    admin_token: str
    enrollment_secret: str
    process: subprocess.Popen[str]
    repo: Path
    output: list[str] = field(default_factory=list)

    def client(self, **kwargs: Any) -> httpx.Client:
        """An HTTP client on the server's URL."""
        return httpx.Client(base_url=self.url, timeout=10, **kwargs)

    def admin_headers(self) -> dict[str, str]:
        """Authorization headers with the admin token."""
        return {"Authorization": f"Bearer {self.admin_token}"}

    def enroll(self, device: str, platform: str = "linux") -> str:
        """Enroll ``device`` with the enrollment secret; returns its token."""
        with self.client() as c:
            r = c.post(
                "/v1/enroll",
                json={
                    "device": device,
                    "platform": platform,
                    "enrollment_secret": self.enrollment_secret,
                },
            )
        r.raise_for_status()
        token: str = r.json()["token"]
        return token

    def log(self) -> str:
        """Everything the server printed so far."""
        return "".join(self.output)


def copy_fleet(dest: Path, *, settings: str | None = None) -> Path:
    """A copy of examples/fleet at ``dest`` (no store), optionally with extra engine.yaml lines."""
    shutil.copytree(EXAMPLE_FLEET, dest, ignore=shutil.ignore_patterns(".engine"))
    if settings:
        engine_yaml = dest / "engine.yaml"
        engine_yaml.write_text(engine_yaml.read_text() + "\n" + settings + "\n")
    return dest


@contextlib.contextmanager
def running_server(
    repo_dir: Path,
    state_url: str | None = None,
    env: dict[str, str] | None = None,
    args: Sequence[str] = (),
    timeout: float = 60,
) -> Iterator[ServerHandle]:
    """`engine serve -C repo_dir` on a free port of 127.0.0.1 until the block ends."""
    cmd = [sys.executable, "-m", "engine", "serve", "-C", str(repo_dir), "--port", "0"]
    if state_url is not None:
        cmd += ["--state", state_url]
    cmd += list(args)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}
    full_env.update(env or {})
    proc = subprocess.Popen(
        cmd,
        cwd=repo_dir,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output: list[str] = []
    ready = threading.Event()
    found: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            m = _READY.search(line)
            if m:
                found.append(m.group(1))
                ready.set()
        ready.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + timeout
        while not ready.wait(0.1):
            if time.monotonic() > deadline:
                raise AssertionError(f"engine serve not ready after {timeout}s:\n{''.join(output)}")
        if not found:
            raise AssertionError(f"engine serve exited ({proc.wait()}):\n{''.join(output)}")
        engine_dir = repo_dir / ".engine"
        admin = (env or {}).get("ENGINE_ADMIN_TOKEN") or (engine_dir / "admin.token").read_text()
        secret = (env or {}).get("ENGINE_ENROLLMENT_SECRET") or (
            engine_dir / "enrollment.secret"
        ).read_text()
        yield ServerHandle(found[0], admin.strip(), secret.strip(), proc, repo_dir, output)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        reader.join(5)


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    """A copy of the example operator repo, field release 3.0.1."""
    return copy_fleet(tmp_path / "fleet", settings='field_release: "3.0.1"')


@pytest.fixture
def server(fleet: Path) -> Iterator[ServerHandle]:
    """`engine serve` on the example fleet with its default SQLite store."""
    with running_server(fleet) as handle:
        yield handle
