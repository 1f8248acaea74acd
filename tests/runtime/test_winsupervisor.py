"""The supervised Windows service's wrapper, as far as it runs without the SCM.

The wrapper and the supervisor are copied into a runtime home as the installer
copies them (``SUPERVISOR_FILES``), and the copy is what runs: as a script with
this interpreter in isolated mode without site-packages (so it can import
nothing of this project), and loaded by its path for the stop hook, which runs
the real supervisor over real (fake) runtimes and stops it from another thread,
as the SCM's control handler does.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent_runtime import supervisor as sv
from agent_runtime.services.windows_supervised import SUPERVISOR_FILES
from tests.harness import wait_until
from tests.runtime.test_supervisor import Home


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Home]:
    """A runtime home with runtime 1.0 (good) current and the two files copied in."""
    h = Home(tmp_path / "AgentRuntime")
    h.add("1.0", "good")
    (h.root / sv.STATE).write_text(json.dumps({"current": "1.0", "trial": None}))
    for name, source in SUPERVISOR_FILES.items():
        (h.root / name).write_bytes(source.read_bytes())
    yield h
    h.stop()


def run_copy(home: Home, *args: str) -> subprocess.CompletedProcess[str]:
    """The home's winsupervisor.py, run as the SCM would run it (but not by the SCM)."""
    cmd = [sys.executable, "-I", "-S", str(home.root / "winsupervisor.py"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False,
                          cwd=home.root.parent)  # fmt: skip


def load_copy(home: Home) -> Any:
    """The home's winsupervisor.py as a module (it loads the supervisor.py beside it)."""
    spec = importlib.util.spec_from_file_location(
        "winsupervisor_copy", home.root / "winsupervisor.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_copy_refuses_to_run_outside_windows(home: Home) -> None:
    """Good arguments, not Windows: exit 2, says so, starts nothing."""
    done = run_copy(home, "--home", str(home.root), "--", "converge", "--config", "C:\\c.yaml")
    assert done.returncode == 2
    assert done.stderr == "winsupervisor runs under the Windows SCM only\n"
    assert not (home.root / "runs.log").exists() and not (home.root / "supervisor.log").exists()


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ([], "the following arguments are required: --home"),
        (["--home", "{home}"], "the runtime's arguments are missing (-- converge --config FILE)"),
        (["--home", "{home}", "--confirm-timeout", "0", "--", "converge"],
         "--confirm-timeout must be a positive number of seconds"),
        (["--home", "{home}", "--confirm-timeout", "soon", "--", "converge"],
         "argument --confirm-timeout: invalid float value: 'soon'"),
        (["--hme", "{home}", "--", "converge"], "the following arguments are required: --home"),
    ],
)  # fmt: skip
def test_bad_arguments_exit_2_with_the_usage(home: Home, args: list[str], error: str) -> None:
    done = run_copy(home, *[a.replace("{home}", str(home.root)) for a in args])
    assert done.returncode == 2
    assert done.stderr.startswith("usage: agent-runtime-supervisor [-h] --home HOME")
    assert done.stderr.endswith(f"error: {error}\n")
    assert "Traceback" not in done.stderr


def test_without_the_supervisor_beside_it(home: Home) -> None:
    (home.root / "supervisor.py").unlink()
    done = run_copy(home, "--home", str(home.root), "--", "converge")
    assert done.returncode == 2
    assert (
        done.stderr == f"winsupervisor: no supervisor.py beside winsupervisor.py in {home.root}\n"
    )


def test_the_stop_hook_stops_the_supervisor_and_its_runtime(home: Home) -> None:
    """The wrapper's service body runs the real supervisor (here on Linux): a hand-over to
    2.0 is confirmed, the supervisor's lines and the runtimes' output go to the home's
    supervisor.log, and ``stop()`` from another thread ends ``run()`` with 0 and no runtime
    left running."""
    home.add("2.0", "good")
    service = load_copy(home).SupervisedService(
        ["--home", str(home.root), "--confirm-timeout", "30", "--", "converge"]
    )
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(service.run()))
    thread.start()
    try:
        wait_until("1.0 to run", lambda: home.running() == ["1.0"], timeout=30)
        home.offer("2.0")
        wait_until("2.0 confirmed", lambda: home.outcome().get("result") == "confirmed", timeout=30)
        wait_until("2.0 alone to run", lambda: home.running() == ["2.0"], timeout=30)
        started = time.monotonic()
        service.stop()
        thread.join(sv.STOP_TIMEOUT + 10)
        assert not thread.is_alive()
        assert time.monotonic() - started < sv.STOP_TIMEOUT  # the runtime stopped on SIGTERM
    finally:
        service.stop()
        thread.join(30)
        service.close()
    assert codes == [0]
    assert home.running() == []
    log = (home.root / "supervisor.log").read_text()
    for line in ("supervisor: started runtime 1.0", "runtime 1.0 up",
                 "supervisor: runtime 2.0 confirmed", "runtime 2.0 up"):  # fmt: skip
        assert line in log


def test_a_supervisor_that_cannot_run_logs_why_and_returns_1(home: Home) -> None:
    """No runtime in the home: run() returns 1 (the SCM's failure actions restart the
    service) and the log says why; a log beyond 10 MB was moved to supervisor.log.1."""
    for version in ("1.0",):
        sv_exe = sv.runtime_exe(home.root, version)
        sv_exe.unlink()
    big = home.root / "supervisor.log"
    with open(big, "wb") as f:
        f.truncate(10 * 1024 * 1024 + 1)
    module = load_copy(home)
    service = module.SupervisedService(["--home", str(home.root), "--", "converge"])
    try:
        assert service.run() == 1
    finally:
        service.close()
    assert os.path.getsize(home.root / "supervisor.log.1") == 10 * 1024 * 1024 + 1
    log = big.read_text()
    assert f"supervisor: no runtime under {home.root / sv.VERSIONS}" in log
    assert home.running() == []


def test_a_missing_home_is_refused(tmp_path: Path, home: Home) -> None:
    module = load_copy(home)
    with pytest.raises(SystemExit, match="is not a directory"):
        module.SupervisedService(["--home", str(tmp_path / "nowhere"), "--", "converge"])


def test_the_in_venv_wrapper_refuses_to_run_outside_windows(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The unsupervised service's wrapper shares run_service; outside Windows it says so."""
    from agent_runtime import winservice

    assert winservice.main(["--config", "C:\\c.yaml"]) == 2
    assert capsys.readouterr().err == "agent_runtime.winservice runs under the Windows SCM only\n"
