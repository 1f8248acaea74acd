"""Running the platform's service tools (systemctl, sc.exe, launchctl) with a time limit.

The managers take the runner as a parameter so that tests can record the exact
commands issued and answer them with the real tools' documented output.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable

from agent_runtime.errors import ServiceError

__all__ = ["Runner", "describe", "run_checked", "subprocess_runner"]

#: Runs ``argv`` with a timeout in seconds and returns its exit code and text output.
#: May raise ``subprocess.TimeoutExpired`` or ``OSError`` (tool missing).
Runner = Callable[[list[str], float], "subprocess.CompletedProcess[str]"]


def subprocess_runner(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a command without a shell, capturing stdout and stderr as text."""
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
        errors="replace",
    )


def run_checked(
    runner: Runner, argv: list[str], timeout: float
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` through ``runner``; turn a timeout or a missing tool into ServiceError.

    A non-zero exit code is returned, not raised: each manager knows which codes
    mean "not running" or "not installed".
    """
    try:
        return runner(argv, timeout)
    except subprocess.TimeoutExpired as e:
        raise ServiceError(f"`{' '.join(argv)}` did not finish within {timeout:g}s") from e
    except OSError as e:
        raise ServiceError(f"cannot run `{' '.join(argv)}`: {e}") from e


def describe(result: subprocess.CompletedProcess[str]) -> str:
    """The command, its exit code and its first line of output, for an error message."""
    text = (result.stderr or "").strip() or (result.stdout or "").strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    said = "; ".join(lines[:3]) if lines else "no output"
    return f"`{' '.join(result.args)}` exited with code {result.returncode}: {said}"
