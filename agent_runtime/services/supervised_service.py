"""The runtime's OS service when the runtime updates itself: the service runs the supervisor.

With a runtime home (``/opt/agent-runtime`` say: ``versions/<v>/`` venvs,
``runtime.json``, a copy of ``supervisor.py``), the service manager starts the
supervisor with the system's Python, and the supervisor starts the current
runtime (docs/runtime.md, "Runtime self-update"). The unit and plist are pure
functions of their inputs (tests compare them exactly), like the runtime's own
unit in ``runtime_service``; stopping the service stops the supervisor, which
stops its runtime, never the agent (``KillMode=process``).
"""

from __future__ import annotations

import plistlib
from pathlib import Path

from agent_runtime.services.runtime_service import LAUNCHD_LABEL, systemd_quote

__all__ = ["supervised_argv", "supervised_launchd_plist", "supervised_systemd_unit"]


def supervised_argv(python: Path, home: Path, config: Path, confirm_timeout: float) -> list[str]:
    """The supervisor's command line: ``python home/supervisor.py --home home ... -- converge
    --config config``."""
    return [str(python), str(home / "supervisor.py"), "--home", str(home),
            "--confirm-timeout", f"{confirm_timeout:g}", "--",
            "converge", "--config", str(config)]  # fmt: skip


def supervised_systemd_unit(
    python: Path, home: Path, config: Path, confirm_timeout: float = 120.0
) -> str:
    """The unit file running the supervisor over ``home`` as root."""
    argv = " ".join(systemd_quote(w) for w in supervised_argv(python, home, config,
                                                                 confirm_timeout))  # fmt: skip
    return (
        "[Unit]\n"
        "Description=agent-runtime (supervised): converges this device's agent; "
        "updates itself\n"
        "Wants=network-online.target\n"
        "After=network-online.target\n"
        "\n"
        "[Service]\n"
        "Type=simple\n"
        f"ExecStart={argv}\n"
        "Restart=always\n"
        "RestartSec=10\n"
        # The supervisor stops its runtime on SIGTERM; the agent's own unit is separate.
        "KillMode=process\n"
        "TimeoutStopSec=60\n"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


def supervised_launchd_plist(
    python: Path, home: Path, config: Path, log: Path, confirm_timeout: float = 120.0
) -> bytes:
    """The launchd daemon plist running the supervisor over ``home`` as root."""
    job = {
        "Label": LAUNCHD_LABEL,
        "ProgramArguments": supervised_argv(python, home, config, confirm_timeout),
        "RunAtLoad": True,
        "KeepAlive": True,
        "ThrottleInterval": 10,
        "ExitTimeOut": 60,
        "AbandonProcessGroup": True,  # the agent outlives a stopped supervisor
        "StandardOutPath": str(log),
        "StandardErrorPath": str(log),
    }
    return plistlib.dumps(job, fmt=plistlib.FMT_XML, sort_keys=True)
