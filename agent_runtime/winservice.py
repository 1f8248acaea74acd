"""Windows service wrapper: ``pythonw -m agent_runtime.winservice --config FILE``.

The unsupervised service (no runtime home): it runs ``agent-runtime converge``
(pull mode) in-process from the runtime's venv, so the runtime cannot update
itself there; the supervised service is ``agent_runtime/winsupervisor.py``.
Answering the Service Control Manager (``run_service``) is shared with it: on
SERVICE_CONTROL_STOP / SHUTDOWN the loop's stop event is set and STOPPED is
reported once the loop has ended. It runs on Windows only; elsewhere it says
so and exits 2. The command lines that register it are generated and tested in
``runtime_service``.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

__all__ = ["main"]


class _PullService:
    """The converge loop (pull mode) of one device config, as the service's work."""

    def __init__(self, config_path: str) -> None:
        from agent_runtime.config import load_config

        self.config = load_config(Path(config_path))
        self.event = threading.Event()

    def run(self) -> int:
        from agent_runtime.pull import run_pull

        return run_pull(self.config, stop=self.event)

    def stop(self) -> None:
        self.event.set()


def main(argv: list[str] | None = None) -> int:
    """Run as the AgentRuntime service; the exit code."""
    args = sys.argv[1:] if argv is None else argv
    if sys.platform != "win32":
        print("agent_runtime.winservice runs under the Windows SCM only", file=sys.stderr)
        return 2
    if len(args) != 2 or args[0] != "--config":
        print("usage: pythonw -m agent_runtime.winservice --config FILE", file=sys.stderr)
        return 2
    from agent_runtime.winsupervisor import run_service

    return run_service("AgentRuntime", lambda: _PullService(args[1]))


if __name__ == "__main__":
    sys.exit(main())
