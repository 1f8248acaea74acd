"""`engine serve` on 127.0.0.1 as a child process that tests can kill and start again."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import requests

from tests.harness.procs import child_env, free_port, wait_until
from tests.harness.repo import OperatorRepo

__all__ = ["ServerProcess"]


class ServerProcess:
    """`engine serve` on 127.0.0.1 as a child process; can be killed and started again."""

    def __init__(
        self,
        repo: OperatorRepo,
        log: Path,
        *,
        port: int | None = None,
        state: str | None = None,
        env: dict[str, str] | None = None,
        args: Sequence[str] = (),
    ) -> None:
        self.repo = repo
        self.log = log
        self.port = port or free_port()
        self.state = state
        self.admin_token = secrets.token_urlsafe(24)
        self.enrollment_secret = secrets.token_urlsafe(24)
        self.env = {
            "ENGINE_ADMIN_TOKEN": self.admin_token,
            "ENGINE_ENROLLMENT_SECRET": self.enrollment_secret,
            **(env or {}),
        }
        if state is not None:
            self.env["ENGINE_STATE_URL"] = state
        self.args = list(args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        """Base URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> None:
        """Start the server and wait until it answers HTTP."""
        cmd = [sys.executable, "-m", "engine", "serve", "-C", str(self.repo.root),
               "--host", "127.0.0.1", "--port", str(self.port), *self.args]  # fmt: skip
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as logf:
            logf.write(f"\n== start {self.starts + 1}: {' '.join(cmd)}\n".encode())
            logf.flush()
            self.proc = subprocess.Popen(
                cmd, cwd=self.repo.root, env=child_env(self.env), stdout=logf,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.starts += 1
        proc = self.proc

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"engine serve exited with {proc.returncode}; see {self.log}:\n{self.tail()}"
                )
            try:
                requests.get(self.url + "/openapi.json", timeout=1)
            except requests.RequestException:
                return False
            return True

        wait_until("engine serve to answer", up, timeout=timeout, interval=0.1)

    def tail(self, lines: int = 30) -> str:
        """The end of the server's log."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL the server (a crash: no shutdown of any kind)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 10) -> None:
        """Stop the server gracefully (SIGTERM, then SIGKILL)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def admin(self, method: str, path: str, **kw: Any) -> requests.Response:
        """An operator API request with the admin token."""
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        return requests.request(method, self.url + path, headers=headers, timeout=10, **kw)
