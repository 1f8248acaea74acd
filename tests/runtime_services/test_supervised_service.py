"""The supervised runtime's unit file and plist, exactly (they cannot run here)."""

from __future__ import annotations

import plistlib
from pathlib import Path

from agent_runtime.services.supervised_service import (
    supervised_argv,
    supervised_launchd_plist,
    supervised_systemd_unit,
)

PY = Path("/usr/bin/python3")
HOME = Path("/opt/agent-runtime")
CONFIG = Path("/etc/agent-runtime/config.yaml")


def test_systemd_unit_runs_the_supervisor_and_never_kills_the_agent() -> None:
    assert supervised_systemd_unit(PY, HOME, CONFIG, 90) == (
        "[Unit]\n"
        "Description=agent-runtime (supervised): converges this device's agent; updates itself\n"
        "Wants=network-online.target\n"
        "After=network-online.target\n"
        "\n"
        "[Service]\n"
        "Type=simple\n"
        "ExecStart=/usr/bin/python3 /opt/agent-runtime/supervisor.py --home /opt/agent-runtime "
        "--confirm-timeout 90 -- converge --config /etc/agent-runtime/config.yaml\n"
        "Restart=always\n"
        "RestartSec=10\n"
        "KillMode=process\n"
        "TimeoutStopSec=60\n"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


def test_systemd_unit_quotes_paths_with_spaces() -> None:
    unit = supervised_systemd_unit(PY, Path("/opt/agent runtime"), CONFIG)
    assert 'ExecStart=/usr/bin/python3 "/opt/agent runtime/supervisor.py" --home ' in unit
    assert '"/opt/agent runtime" --confirm-timeout 120 -- converge' in unit


def test_launchd_plist() -> None:
    data = supervised_launchd_plist(PY, HOME, CONFIG, Path("/var/log/agent-runtime.log"), 90)
    assert plistlib.loads(data) == {
        "Label": "org.fleet-rollout.agent-runtime",
        "ProgramArguments": [
            "/usr/bin/python3",
            "/opt/agent-runtime/supervisor.py",
            "--home",
            "/opt/agent-runtime",
            "--confirm-timeout",
            "90",
            "--",
            "converge",
            "--config",
            "/etc/agent-runtime/config.yaml",
        ],
        "RunAtLoad": True,
        "KeepAlive": True,
        "ThrottleInterval": 10,
        "ExitTimeOut": 60,
        "AbandonProcessGroup": True,
        "StandardOutPath": "/var/log/agent-runtime.log",
        "StandardErrorPath": "/var/log/agent-runtime.log",
    }


def test_argv_is_what_the_supervisor_parses() -> None:
    from agent_runtime.supervisor import main

    argv = supervised_argv(PY, HOME, CONFIG, 2.5)
    assert argv[1:] == [
        "/opt/agent-runtime/supervisor.py", "--home", "/opt/agent-runtime",
        "--confirm-timeout", "2.5", "--", "converge", "--config", str(CONFIG),
    ]  # fmt: skip
    assert callable(main)
