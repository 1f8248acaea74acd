"""`--version` on both command-line programs."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version

import pytest


@pytest.mark.parametrize(
    ("module", "prog"), [("engine", "engine"), ("agent_runtime.cli", "agent-runtime")]
)
def test_version_prints_the_package_version(module: str, prog: str) -> None:
    """`engine --version` and `agent-runtime --version` print the program and its version."""
    done = subprocess.run(
        [sys.executable, "-m", module, "--version"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (0, f"{prog} {version('fleet-rollout')}\n")
