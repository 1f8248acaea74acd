"""The installer on Windows, run here with the host detected as Windows: the runtime home it
lays out, the launcher it writes, the exact `agent-runtime service install|uninstall` command
lines it runs, and the conversion of an old plain-venv prefix.

No Windows venv can be built here, so each test's home holds a version in the Windows venv
layout (``versions/<V>/Scripts/agent-runtime.exe``, ``Lib/site-packages/agent_runtime/``
with the package's real supervisor.py and winsupervisor.py), as the installer's pip would
have left it; its ``agent-runtime.exe`` is a stand-in that records every command line (and
what the prefix held when it ran) and answers as the runtime does. The service command line
is also given to the real runtime CLI (`service show`), which turns it into the sc.exe
commands of the supervised Windows service.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent_runtime import supervisor, winsupervisor
from agent_runtime.cli import main as runtime_main
from agent_runtime.services.windows_supervised import windows_supervised_create_commands
from engine.install import bootstrap_script as installer
from engine.signing import generate_key, public_key_text, sign

VERSION = "0.1.0"
PY = f"{sys.version_info[0]}.{sys.version_info[1]}"
WINDOWS = installer.Host("windows", "amd64", PY, "windows")
#: The pythonw.exe the installer names: beside the interpreter outside any venv.
PYTHONW = str(Path(getattr(sys, "_base_executable", None) or sys.executable).parent / "pythonw.exe")

#: ``versions/<V>/Scripts/agent-runtime.exe``: records its command line and the prefix's
#: entries, then answers as the runtime would (enroll writes the token; service install is
#: "unchanged" when the same command line was installed before).
FAKE_RUNTIME = """#!{python}
import json, os, sys
from pathlib import Path
exe = Path(__file__)
version, prefix = exe.parents[1].name, exe.parents[3]
with open({log!r}, "a", encoding="utf-8") as f:
    f.write(json.dumps({{"argv": [str(exe), *sys.argv[1:]],
                        "prefix": sorted(os.listdir(prefix))}}) + "\\n")
args = sys.argv[1:]
if args[0] == "enroll":
    server = json.loads(Path(args[args.index("--config") + 1]).read_text())["server"]
    Path(server["token_file"]).write_text("token")
    Path(server["enrollment_code_file"]).unlink()
elif args[0] == "adopt":
    print(json.dumps({{"status": "known", "version": "3.0.0", "detail": ""}}))
elif args[:2] == ["service", "install"]:
    seen = Path({log!r} + ".service")
    same = seen.is_file() and seen.read_text() == repr(args)
    seen.write_text(repr(args))
    print("service AgentRuntime " + ("unchanged" if same else "created over " + str(prefix)))
elif args[:2] == ["service", "uninstall"]:
    print("windows AgentRuntime removed")
elif args[0] == "exit":
    sys.exit(int(args[1]))
else:
    print("runtime " + version + ": " + " ".join(args))
"""


class Device:
    """A Windows device's directories under ``base``: the agent, the runtime prefix, a
    signed bundle for Windows, and the log of the stand-in runtime's command lines."""

    def __init__(self, base: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.base = base
        self.capsys = capsys
        self.agent_root = base / "agent"
        self.agent_root.mkdir(parents=True)
        (self.agent_root / "agent.exe").write_bytes(b"MZ agent 3.0.0")
        self.prefix = base / "Program Files" / "AgentRuntime"
        self.config = self.prefix / "etc" / "config.yaml"
        self.log = base / "calls.jsonl"
        key = generate_key()
        self.key = public_key_text(key.public_key())
        self.bundle = base / f"windows-amd64-py{PY}"
        self.bundle.mkdir()
        doc = {"target": self.bundle.name, "platform": "windows", "arch": "amd64",
               "python": PY, "runtime_version": VERSION, "files": []}  # fmt: skip
        data = json.dumps(doc).encode()
        (self.bundle / "bundle.json").write_bytes(data)
        (self.bundle / "bundle.json.sig").write_bytes(sign(data, [key]))

    def add_version(self, version: str = VERSION) -> Path:
        """``versions/<version>`` in the Windows venv layout, as pip would have left it."""
        venv = self.prefix / "versions" / version
        exe = venv / "Scripts" / "agent-runtime.exe"
        exe.parent.mkdir(parents=True)
        exe.write_text(FAKE_RUNTIME.format(python=sys.executable, log=str(self.log)))
        exe.chmod(0o755)
        (venv / "Scripts" / "python.exe").write_bytes(b"MZ")
        (venv / "pyvenv.cfg").write_text(f"home = C:\\Python{PY.replace('.', '')}\n")
        package = venv / "Lib" / "site-packages" / "agent_runtime"
        package.mkdir(parents=True)
        for source in (supervisor.__file__, winsupervisor.__file__):
            (package / Path(source).name).write_bytes(Path(source).read_bytes())
        return exe

    def run(self, *extra: str) -> dict[str, Any]:
        """The installer's main with --json, on a host detected as Windows; its result."""
        args = ["--device", "win-01", "--server", "http://127.0.0.1:9", "--prefix",
                str(self.prefix), "--agent-root", str(self.agent_root), "--bundle-dir",
                str(self.bundle), "--pinned-key", self.key, "--json", *extra]  # fmt: skip
        self.capsys.readouterr()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(installer, "detect", lambda: WINDOWS)
            code = installer.main(args)
        result: dict[str, Any] = json.loads(self.capsys.readouterr().out)
        assert code == (0 if result["ok"] else 1), result
        return result

    def calls(self) -> list[dict[str, Any]]:
        """The stand-in runtime's command lines so far, and the prefix's entries at each."""
        if not self.log.is_file():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


@pytest.fixture
def device(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Device:
    """A Windows device under tmp_path/win, nothing of the runtime on it yet."""
    return Device(tmp_path / "win", capsys)


def _launcher_cmd() -> bytes:
    return (
        "@echo off\r\n"
        "rem agent-runtime: the current runtime of this runtime home (written by install.py)\r\n"
        f'"{sys.executable}" "%~dp0agent-runtime.py" %*\r\n'
        "exit /b %ERRORLEVEL%\r\n"
    ).encode()


def test_a_windows_install_lays_out_the_home_and_installs_the_supervised_service(
    device: Device, capsys: pytest.CaptureFixture[str]
) -> None:
    """runtime.json, supervisor.py and winsupervisor.py out of the version's
    Lib\\site-packages, bin\\agent-runtime.cmd; enroll and adopt with the version's
    Scripts\\agent-runtime.exe; `service install --manager windows --home H --python
    <base>\\pythonw.exe`, which the real CLI turns into the supervised service's sc.exe
    create; a second run changes nothing."""
    exe = device.add_version()
    prefix, config = device.prefix, device.config
    result = device.run("--code", "k7m3q")
    assert result["ok"], result
    assert result["runtime"] == {
        "home": str(prefix), "version": VERSION,
        "command": str(prefix / "bin" / "agent-runtime.cmd"),
        "supervisor": [sys.executable, str(prefix / "supervisor.py"), "--home", str(prefix),
                       "--confirm-timeout", "120", "--", "converge", "--config", str(config)],
    }  # fmt: skip
    assert json.loads((prefix / "runtime.json").read_text()) == {"current": VERSION, "trial": None}
    assert (prefix / "supervisor.py").read_bytes() == Path(supervisor.__file__).read_bytes()
    assert (prefix / "winsupervisor.py").read_bytes() == Path(winsupervisor.__file__).read_bytes()
    assert (prefix / "bin" / "agent-runtime.cmd").read_bytes() == _launcher_cmd()
    assert sorted(p.name for p in prefix.iterdir()) == [
        "bin", "etc", "runtime.json", "supervisor.py", "versions", "winsupervisor.py"]  # fmt: skip
    assert sorted(p.name for p in (prefix / "bin").iterdir()) == [
        "agent-runtime.cmd", "agent-runtime.py"]  # fmt: skip
    assert json.loads(config.read_text())["platform"] == "windows"
    service = [str(exe), "service", "install", "--manager", "windows", "--config", str(config),
               "--home", str(prefix), "--python", PYTHONW, "--confirm-timeout", "120"]  # fmt: skip
    assert [c["argv"] for c in device.calls()] == [
        [str(exe), "enroll", "--config", str(config)],
        [str(exe), "adopt", "--json", "--config", str(config)],
        service,
    ]
    assert result["adoption"]["status"] == "known"
    assert f"service AgentRuntime created over {prefix}" in result["changed"]

    # The real runtime CLI takes these options: the supervised service over this home,
    # run by that pythonw.exe, with this config and confirm timeout.
    capsys.readouterr()
    assert runtime_main(["service", "show", *service[3:]]) == 0
    shown = capsys.readouterr().out.splitlines()
    create = windows_supervised_create_commands(Path(PYTHONW), prefix, config, 120.0)
    assert shown == [subprocess.list2cmdline(argv) for argv in create]
    assert "winsupervisor.py" in shown[0] and "pythonw.exe" in shown[0]

    again = device.run("--code", "k7m3q")
    assert again["ok"] and again["changed"] == [], again
    assert [c["argv"][1] for c in device.calls()[3:]] == ["adopt", "service"]


def test_the_windows_launcher_runs_the_current_version(device: Device) -> None:
    """bin\\agent-runtime.py (what agent-runtime.cmd runs) runs runtime.json's current
    version's Scripts\\agent-runtime.exe with the arguments given, exits with its code,
    follows a change of current, and says so when there is none."""
    device.add_version()
    assert device.run("--code", "c", "--service", "none")["ok"]
    device.add_version("0.2.0")
    launcher = device.prefix / "bin" / "agent-runtime.py"

    def launch(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(launcher), *args], capture_output=True,
                              text=True, timeout=30, check=False)  # fmt: skip

    assert launch("status", "--json").stdout == "runtime 0.1.0: status --json\n"
    assert launch("exit", "3").returncode == 3
    state = device.prefix / "runtime.json"
    state.write_text(json.dumps({"current": "0.2.0", "trial": None}))
    assert launch("status").stdout == "runtime 0.2.0: status\n"
    state.unlink()
    failed = launch("status")
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert failed.stderr.startswith(f"agent-runtime: no current runtime in {device.prefix}: ")


def _plain_venv(prefix: Path) -> dict[Path, bytes]:
    """The prefix as the Windows installer left it before runtime self-update (a venv, the
    device config, token and state under it); the files that must be kept."""
    for name in ("pyvenv.cfg", "Scripts/agent-runtime.exe", "Scripts/python.exe",
                 "Scripts/pythonw.exe", "Lib/site-packages/agent_runtime/__init__.py",
                 "Include/site/x.h", "share/doc/y.txt", "etc/token",
                 "state/state.json"):  # fmt: skip
        (prefix / name).parent.mkdir(parents=True, exist_ok=True)
        (prefix / name).write_text(name)
    return {p: p.read_bytes() for p in prefix.rglob("*")
            if p.is_file() and p.parts[len(prefix.parts)] in ("etc", "state")}  # fmt: skip


def test_a_windows_plain_venv_prefix_is_converted_in_place(device: Device) -> None:
    """An old install (venv at the prefix, its plain service): the service is swapped while
    the old venv is still there, then its files go (Scripts, Lib, Include, share,
    pyvenv.cfg); token and state stay byte for byte, enrollment is skipped. A second run
    changes nothing."""
    prefix = device.prefix
    kept = _plain_venv(prefix)
    exe = device.add_version()  # built by the first, interrupted, run
    result = device.run()
    assert result["ok"], result
    calls = device.calls()
    assert [c["argv"][1:3] for c in calls] == [["adopt", "--json"], ["service", "install"]]
    assert calls[1]["argv"][0] == str(exe)
    assert {"Scripts", "Lib", "Include", "pyvenv.cfg"} <= set(calls[1]["prefix"])
    assert sorted(p.name for p in prefix.iterdir()) == [
        "bin", "etc", "runtime.json", "state", "supervisor.py", "versions",
        "winsupervisor.py"]  # fmt: skip
    assert {p: p.read_bytes() for p in kept} == kept
    launcher = prefix / "bin" / "agent-runtime.cmd"
    assert result["changed"][-1] == (
        f"the old runtime venv's files removed from {prefix}: it is a runtime home; "
        f"{launcher} runs the current runtime"
    )
    assert launcher.read_bytes() == _launcher_cmd()
    again = device.run()
    assert again["ok"] and again["changed"] == [], again


def test_windows_without_a_service_names_the_supervisor_command(device: Device) -> None:
    """--service none: no service command runs; the note is the supervisor's command line as
    cmd.exe takes it, and on an old venv prefix says to stop the old runtime first."""
    _plain_venv(device.prefix)
    device.add_version()
    result = device.run("--service", "none")
    assert result["ok"], result
    assert [c["argv"][1] for c in device.calls()] == ["adopt"]
    argv = subprocess.list2cmdline(result["runtime"]["supervisor"])
    old = device.prefix / "Scripts" / "agent-runtime.exe"
    assert result["notes"] == [
        f"no OS service installed: run {argv} (stop the old runtime, {old} converge, first)"
    ]


def test_a_windows_uninstall_stops_the_supervised_service_then_removes_the_home(
    device: Device,
) -> None:
    """--uninstall runs the current version's `service uninstall --manager windows --home
    H` (which waits until the supervisor has stopped its runtime) while the home is still
    there, then removes the home; the agent's files stay."""
    exe = device.add_version()
    assert device.run("--code", "c")["ok"]
    before = {p: p.read_bytes() for p in device.agent_root.rglob("*")}
    result = device.run("--uninstall")
    assert result["ok"], result
    last = device.calls()[-1]
    assert last["argv"] == [
        str(exe),
        "service",
        "uninstall",
        "--manager",
        "windows",
        "--config",
        str(device.config),
        "--home",
        str(device.prefix),
    ]
    assert "runtime.json" in last["prefix"]
    assert not device.prefix.exists()
    assert {p: p.read_bytes() for p in device.agent_root.rglob("*")} == before


def test_a_windows_version_is_built_with_the_venvs_scripts_python(device: Device) -> None:
    """Without a version in the home the installer makes the venv and runs pip with its
    Scripts\\python.exe (here, where `python -m venv` makes bin/python, that fails: one
    clear error), and a fresh home it could not build is removed."""
    result = device.run("--code", "c")
    python = device.prefix / "versions" / VERSION / "Scripts" / "python.exe"
    assert not result["ok"]
    assert result["error"].startswith(f"pip install from the bundle failed: cannot run {python}")
    assert not device.prefix.exists()
    assert device.calls() == []
