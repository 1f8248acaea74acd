"""The supervised Windows service: the exact sc.exe command lines, the files it copies into
the runtime home, and the commands install/uninstall issue (the SCM cannot run here: a fake
runner answers as sc.exe documents, in fake time)."""

from __future__ import annotations

import subprocess
from pathlib import Path, PureWindowsPath

import pytest

from agent_runtime import supervisor, winsupervisor
from agent_runtime.cli import main as runtime_main
from agent_runtime.errors import ServiceError
from agent_runtime.services.windows import WindowsServiceManager
from agent_runtime.services.windows_supervised import (
    WindowsSupervisedService,
    base_pythonw,
    windows_supervised_bin_path,
    windows_supervised_create_commands,
    windows_supervised_update_commands,
)
from tests.harness.sandbox import Sandbox
from tests.runtime_services.conftest import Answer, FakeRunner, FakeTime, out

PYW = PureWindowsPath(r"C:\Program Files\Python311\pythonw.exe")
HOME = PureWindowsPath(r"C:\Program Files\AgentRuntime")
CONF = PureWindowsPath(r"C:\ProgramData\AgentRuntime\config.yaml")
BIN = (
    r'"C:\Program Files\Python311\pythonw.exe" "C:\Program Files\AgentRuntime\winsupervisor.py" '
    r'--home "C:\Program Files\AgentRuntime" --confirm-timeout 120 '
    r'-- converge --config "C:\ProgramData\AgentRuntime\config.yaml"'
)
SETTINGS = [
    ["sc.exe", "description", "AgentRuntime",
     "Converges this device's agent to its planned release and updates itself "
     "(agent-runtime under its supervisor)."],
    ["sc.exe", "failure", "AgentRuntime", "reset=", "86400",
     "actions=", "restart/10000/restart/10000/restart/60000"],
    ["sc.exe", "failureflag", "AgentRuntime", "1"],
]  # fmt: skip


def test_bin_path_runs_the_home_copy_of_the_wrapper_with_the_base_pythonw() -> None:
    assert windows_supervised_bin_path(PYW, HOME, CONF) == BIN
    bin90 = windows_supervised_bin_path(PYW, HOME, CONF, 90.5)
    assert "--confirm-timeout 90.5 -- converge" in bin90


def test_bin_path_is_windows_style_from_any_path_and_keeps_a_closing_quote() -> None:
    """Forward slashes become backslashes; a trailing backslash is doubled so that it does
    not escape the closing quote (CommandLineToArgvW)."""
    posix_style = windows_supervised_bin_path(
        Path("C:/Python311/pythonw.exe"), Path("D:/rt"), Path("D:/rt/config.yaml")
    )
    assert posix_style == (
        r'"C:\Python311\pythonw.exe" "D:\rt\winsupervisor.py" --home "D:\rt" '
        r'--confirm-timeout 120 -- converge --config "D:\rt\config.yaml"'
    )
    at_root = windows_supervised_bin_path(PYW, PureWindowsPath("D:/"), CONF)
    assert r'--home "D:\\" --confirm-timeout' in at_root


def test_create_commands_are_exactly_these() -> None:
    """create (automatic start), description, failure actions (restart after 10 s, 10 s,
    60 s), failureflag 1 (a stop with an error counts as a failure), start."""
    assert windows_supervised_create_commands(PYW, HOME, CONF) == [
        ["sc.exe", "create", "AgentRuntime", "binPath=", BIN, "start=", "auto",
         "DisplayName=", "Agent Runtime"],
        *SETTINGS,
        ["sc.exe", "start", "AgentRuntime"],
    ]  # fmt: skip


def test_update_commands_are_exactly_these() -> None:
    """A registered service is re-pointed with sc.exe config (no delete: no 1072 "marked
    for deletion" while a handle is open), then stopped and started."""
    assert windows_supervised_update_commands(PYW, HOME, CONF) == [
        ["sc.exe", "config", "AgentRuntime", "binPath=", BIN, "start=", "auto",
         "DisplayName=", "Agent Runtime"],
        *SETTINGS,
        ["sc.exe", "stop", "AgentRuntime"],
        ["sc.exe", "start", "AgentRuntime"],
    ]  # fmt: skip


# -- install / uninstall against a fake sc.exe ---------------------------------------------------


def queryex(code: int, name: str) -> Answer:
    """`sc.exe queryex AgentRuntime` as Windows prints it."""
    return out([], 0, stdout=(
        "\nSERVICE_NAME: AgentRuntime\n"
        "        TYPE               : 10  WIN32_OWN_PROCESS\n"
        f"        STATE              : {code}  {name}\n"
        "        WIN32_EXIT_CODE    : 0  (0x0)\n"
        "        PID                : 4242\n"
    ))  # fmt: skip


QX = ["sc.exe", "queryex", "AgentRuntime"]
QC = ["sc.exe", "qc", "AgentRuntime", "8192"]
RUNNING, STOPPED, STOP_PENDING = queryex(4, "RUNNING"), queryex(1, "STOPPED"), queryex(3, "X")
MISSING = out([], 1060, stdout="[SC] OpenService FAILED 1060:\n")
#: The manager's start: not running (queryex), installed (queryex), start, poll until RUNNING.
START = [(QX, STOPPED), (QX, STOPPED), (["sc.exe", "start", "AgentRuntime"], out([])),
         (QX, RUNNING)]  # fmt: skip


def qc(bin_path: str) -> Answer:
    """`sc.exe qc` of a registered service."""
    return out([], 0, stdout=f"        BINARY_PATH_NAME   : {bin_path}\n")


class Home:
    """A runtime home in tmp_path with one installed runtime, and a base pythonw."""

    def __init__(self, root: Path) -> None:
        self.root = root
        exe = root / "versions" / "0.1.0" / "Scripts" / "agent-runtime.exe"
        exe.parent.mkdir(parents=True)
        exe.write_bytes(b"MZ")
        self.pythonw = root.parent / "Python311" / "pythonw.exe"
        self.pythonw.parent.mkdir()
        self.pythonw.write_bytes(b"MZ")
        self.config = root.parent / "config.yaml"

    def service(self, *script: tuple[list[str], Answer]) -> tuple[WindowsSupervisedService,
                                                                  FakeRunner]:  # fmt: skip
        runner = FakeRunner(list(script))
        clock = FakeTime()
        manager = WindowsServiceManager(
            "AgentRuntime", runner=runner, stop_timeout=30.0, sleep=clock.sleep,
            monotonic=clock.monotonic,
        )  # fmt: skip
        svc = WindowsSupervisedService(
            pythonw=self.pythonw, home=self.root, config=self.config, runner=runner,
            manager=manager,
        )  # fmt: skip
        return svc, runner

    def create(self) -> list[list[str]]:
        return windows_supervised_create_commands(self.pythonw, self.root, self.config)


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return Home(tmp_path / "AgentRuntime")


def test_first_install_copies_the_files_creates_and_waits_for_running(home: Home) -> None:
    create = home.create()
    svc, runner = home.service(
        (QC, MISSING),
        *[(argv, out([])) for argv in create[:-1]],
        *START,
    )  # fmt: skip
    change = svc.install()
    assert runner.done() and change.changed
    assert change.detail == f"service AgentRuntime created over {home.root}, started"
    for name, module in (("supervisor.py", supervisor), ("winsupervisor.py", winsupervisor)):
        assert (home.root / name).read_bytes() == Path(str(module.__file__)).read_bytes()


def test_second_install_changes_nothing(home: Home) -> None:
    svc, _ = home.service()
    svc.copy_files()
    svc, runner = home.service((QC, qc(svc.bin_path)), (QX, RUNNING))
    change = svc.install()
    assert runner.done() and not change.changed
    assert change.detail == "service AgentRuntime unchanged"


def test_the_unsupervised_service_is_re_pointed_and_restarted(home: Home) -> None:
    """AgentRuntime registered by an install without a home (the venv's winservice): sc.exe
    config with the supervised command line, then stop (waiting for STOPPED) and start."""
    old = r'"C:\Program Files\AgentRuntime\Scripts\pythonw.exe" -m agent_runtime.winservice'
    update = windows_supervised_update_commands(home.pythonw, home.root, home.config)
    svc, runner = home.service(
        (QC, qc(old)),
        *[(argv, out([])) for argv in update[:-2]],
        (QX, RUNNING), (["sc.exe", "stop", "AgentRuntime"], out([])), (QX, STOP_PENDING),
        (QX, STOPPED), *START,
    )  # fmt: skip
    change = svc.install()
    assert runner.done() and change.changed
    assert "now runs the supervisor" in change.detail


def test_a_changed_supervisor_file_restarts_the_service(home: Home) -> None:
    """Same command line, but the home's supervisor.py is not this package's: it is
    replaced and the service restarted so that the new supervisor runs."""
    svc, _ = home.service()
    svc.copy_files()
    (home.root / "supervisor.py").write_text("# an older supervisor\n")
    update = windows_supervised_update_commands(home.pythonw, home.root, home.config)
    svc, runner = home.service(
        (QC, qc(svc.bin_path)),
        *[(argv, out([])) for argv in update[:-2]],
        (QX, RUNNING), (["sc.exe", "stop", "AgentRuntime"], out([])), (QX, STOPPED),
        *START,
    )  # fmt: skip
    assert svc.install().changed and runner.done()
    assert (home.root / "supervisor.py").read_bytes() == Path(str(supervisor.__file__)).read_bytes()


def test_a_service_that_does_not_reach_running_is_an_error(home: Home) -> None:
    """The wrapper failed (e.g. a broken pythonw): STOPPED again after start, with its exit
    code, is a ServiceError."""
    create = home.create()
    stopped_1066 = out([], 0, stdout=str(STOPPED.stdout).replace(  # type: ignore[union-attr]
        "WIN32_EXIT_CODE    : 0  (0x0)", "WIN32_EXIT_CODE    : 1066  (0x42a)"))  # fmt: skip
    svc, runner = home.service(
        (QC, MISSING),
        *[(argv, out([])) for argv in create[:-1]],
        *START[:-1], (QX, stopped_1066),
    )  # fmt: skip
    with pytest.raises(ServiceError, match=r"STOPPED \(WIN32_EXIT_CODE 1066\)"):
        svc.install()
    assert runner.done()


def test_install_refuses_a_home_without_a_runtime_or_interpreter(home: Home) -> None:
    """Nothing is registered (the fake runner fails on any command) and nothing copied."""
    svc, _ = home.service()
    home.pythonw.unlink()
    with pytest.raises(ServiceError, match=r"pythonw\.exe: the base Python"):
        svc.install()
    home.pythonw.write_bytes(b"MZ")
    (home.root / "versions" / "0.1.0" / "Scripts" / "agent-runtime.exe").unlink()
    with pytest.raises(ServiceError, match="holds no runtime"):
        svc.install()
    assert not (home.root / "supervisor.py").exists()


def test_uninstall_stops_then_deletes_and_is_idempotent(home: Home) -> None:
    svc, runner = home.service(
        (QX, RUNNING), (["sc.exe", "stop", "AgentRuntime"], out([])), (QX, STOPPED),
        (["sc.exe", "delete", "AgentRuntime"], out([])),
    )  # fmt: skip
    assert svc.uninstall().changed and runner.done()
    svc, runner = home.service(
        (QX, MISSING), (["sc.exe", "delete", "AgentRuntime"], MISSING)
    )  # fmt: skip
    change = svc.uninstall()
    assert runner.done() and not change.changed
    assert change.detail == "windows AgentRuntime was not installed"


def test_base_pythonw_is_the_venvs_base_interpreter(tmp_path: Path) -> None:
    venv = tmp_path / "versions" / "0.1.0"
    venv.mkdir(parents=True)
    with pytest.raises(ServiceError, match=r"pyvenv\.cfg"):
        base_pythonw(venv)
    (venv / "pyvenv.cfg").write_text("include-system-site-packages = false\n")
    with pytest.raises(ServiceError, match="names no 'home'"):
        base_pythonw(venv)
    (venv / "pyvenv.cfg").write_text(
        "home = C:\\Program Files\\Python311\ninclude-system-site-packages = false\n"
    )
    assert base_pythonw(venv) == Path("C:\\Program Files\\Python311") / "pythonw.exe"


def test_cli_service_show_with_home_prints_the_supervised_commands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`agent-runtime service show --manager windows --home H`: the create commands as
    cmd.exe takes them, run by the base interpreter of the venv running the CLI."""
    sandbox = Sandbox(base=tmp_path / "device")
    home = tmp_path / "rt"
    code = runtime_main(["service", "show", "--manager", "windows", "--home", str(home),
                         "--config", str(sandbox.config_path)])  # fmt: skip
    import sys

    pythonw = base_pythonw(Path(sys.prefix))
    wanted = windows_supervised_create_commands(pythonw, home, sandbox.config_path)
    assert code == 0
    assert capsys.readouterr().out.splitlines() == [subprocess.list2cmdline(a) for a in wanted]


def test_service_action_show_and_bad_confirm_timeout(home: Home) -> None:
    """The show action prints the create commands for the given interpreter and timeout; a
    timeout that is not positive is refused before anything runs."""
    from agent_runtime.services.windows_supervised import service_action

    lines: list[str] = []
    code = service_action("show", home=home.root, config=home.config, out=lines.append,
                          confirm_timeout=45, pythonw=home.pythonw)  # fmt: skip
    wanted = windows_supervised_create_commands(home.pythonw, home.root, home.config, 45)
    assert code == 0 and lines == [subprocess.list2cmdline(a) for a in wanted]
    with pytest.raises(ServiceError, match="--confirm-timeout must be positive, not 0"):
        service_action("install", home=home.root, config=home.config, out=lines.append,
                       confirm_timeout=0, pythonw=home.pythonw, runner=FakeRunner([]))  # fmt: skip
