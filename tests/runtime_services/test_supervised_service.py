"""The supervised runtime's unit file and plist, exactly, and the commands installing them
issues (systemd and launchd cannot run here: a fake runner answers as they document)."""

from __future__ import annotations

import plistlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent_runtime.cli import main as runtime_main
from agent_runtime.errors import ServiceError
from agent_runtime.services.runtime_service import systemd_unit
from agent_runtime.services.supervised_service import (
    SupervisedService,
    supervised_argv,
    supervised_launchd_plist,
    supervised_systemd_unit,
)
from engine.signing import generate_key, public_key_text
from tests.runtime_services.conftest import FakeRunner, out

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


# -- installing it: the exact files and commands (systemd and launchd cannot run here) -----

LOG = Path("/var/lib/agent-runtime/runtime.log")
UNIT_NAME = "agent-runtime.service"
NEED_RELOAD = ["systemctl", "show", "--property=NeedDaemonReload", "--value", UNIT_NAME]


def _home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    (home / "supervisor.py").write_text("# the supervisor\n")
    return home


def test_systemd_install_replaces_the_plain_unit_then_is_unchanged(tmp_path: Path) -> None:
    """Over the plain unit (an install from before runtime self-update): stop, write the
    supervised unit, reload, enable + start; a second install only re-enables. Uninstall
    removes it."""
    home, units = _home(tmp_path), tmp_path / "units"
    units.mkdir()
    (units / UNIT_NAME).write_text(systemd_unit(home / "bin" / "agent-runtime", CONFIG))
    runner = FakeRunner([
        (["systemctl", "stop", UNIT_NAME], out([])),
        (["systemctl", "daemon-reload"], out([])),
        (["systemctl", "enable", "--now", UNIT_NAME], out([])),
        (NEED_RELOAD, out([], 0, "no\n")),
        (["systemctl", "enable", "--now", UNIT_NAME], out([])),
        (["systemctl", "disable", "--now", UNIT_NAME], out([])),
        (["systemctl", "daemon-reload"], out([])),
    ])  # fmt: skip
    svc = SupervisedService("systemd", python=PY, home=home, config=CONFIG, log=LOG,
                            confirm_timeout=90, directory=units, runner=runner)  # fmt: skip
    change = svc.install()
    assert change.changed and change.detail.endswith("installed and started")
    assert (units / UNIT_NAME).read_text() == supervised_systemd_unit(PY, home, CONFIG, 90)
    assert svc.install().detail == f"systemd {UNIT_NAME} unchanged"
    assert svc.uninstall().changed and not (units / UNIT_NAME).exists()
    assert runner.done()


def test_launchd_install_boots_the_old_job_out_before_writing(tmp_path: Path) -> None:
    """A loaded job with another plist is booted out, then the supervised plist is written
    and bootstrapped; once loaded as written, nothing runs."""
    home, daemons = _home(tmp_path), tmp_path / "daemons"
    daemons.mkdir()
    plist = daemons / "org.fleet-rollout.agent-runtime.plist"
    plist.write_bytes(b"<plist>the plain job</plist>")
    target = "system/org.fleet-rollout.agent-runtime"
    runner = FakeRunner([
        (["launchctl", "print", target], out([], 0, "state = running\n")),
        (["launchctl", "bootout", target], out([])),
        (["launchctl", "bootstrap", "system", str(plist)], out([])),
        (["launchctl", "print", target], out([], 0, "state = running\n")),
    ])  # fmt: skip
    svc = SupervisedService("launchd", python=PY, home=home, config=CONFIG, log=LOG,
                            directory=daemons, runner=runner)  # fmt: skip
    assert svc.install().changed
    assert plist.read_bytes() == supervised_launchd_plist(PY, home, CONFIG, LOG, 120)
    assert not svc.install().changed
    assert runner.done()


def test_a_directory_without_supervisor_is_refused(tmp_path: Path) -> None:
    """--home naming a directory that is not a runtime home installs nothing."""
    runner = FakeRunner([])
    svc = SupervisedService("systemd", python=PY, home=tmp_path, config=CONFIG, log=LOG,
                            directory=tmp_path, runner=runner)  # fmt: skip
    with pytest.raises(ServiceError, match=r"is not a runtime home: it has no supervisor\.py"):
        svc.install()
    assert not (tmp_path / UNIT_NAME).exists()


def test_the_supervised_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """`systemd-analyze verify` accepts the supervised unit (with an existing Python)."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (scripts/setup installs it as root)")
    unit = tmp_path / UNIT_NAME
    unit.write_text(supervised_systemd_unit(Path(sys.executable), _home(tmp_path), CONFIG))
    proc = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    problems = [line for line in proc.stderr.splitlines() if UNIT_NAME in line]
    assert proc.returncode == 0 and not problems, proc.stderr


def _cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"device: d1\nplatform: linux\nagent_root: {tmp_path / 'agent'}\n"
        f"state_dir: {tmp_path / 'state'}\nservice: {{manager: process}}\n"
        f"trusted_keys: [{public_key_text(generate_key().public_key())}]\n"
    )
    code = runtime_main(["service", *args, "--config", str(config)])
    said = capsys.readouterr()
    return code, said.out, said.err


def test_cli_shows_the_supervised_unit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`service show --manager systemd --home H --python P --confirm-timeout S` prints
    exactly the supervised unit."""
    home = _home(tmp_path)
    code, shown, err = _cli(tmp_path, capsys, "show", "--manager", "systemd", "--home",
                            str(home), "--python", str(PY), "--confirm-timeout", "45")  # fmt: skip
    assert code == 0, err
    assert shown == supervised_systemd_unit(PY, home, tmp_path / "config.yaml", 45)


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--manager", "systemd", "--confirm-timeout", "5"], "need --home"),
        (["--manager", "launchd", "--python", "/usr/bin/python3"], "need --home"),
        (["--manager", "windows", "--confirm-timeout", "5"], "need --home"),
        (["--manager", "systemd", "--home", "H", "--confirm-timeout", "0"], "must be positive"),
    ],
)
def test_cli_refuses_what_it_cannot_install(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], said: str
) -> None:
    """Each is one clear line on stderr (exit 1 or 2, no traceback) and no unit written."""
    units = tmp_path / "units"
    units.mkdir()
    code, _, err = _cli(tmp_path, capsys, "install", "--directory", str(units), *args)
    assert code in (1, 2) and said in err and err.count("\n") == 1, err
    assert not list(units.iterdir())


def test_windows_is_not_this_class(tmp_path: Path) -> None:
    """The SCM keeps no unit file: SupervisedService refuses Windows, naming the module that
    installs the supervised Windows service."""
    with pytest.raises(ServiceError, match="windows_supervised"):
        SupervisedService("windows", python=PY, home=_home(tmp_path), config=CONFIG, log=LOG)
