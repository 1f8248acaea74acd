"""The real `agent-runtime converge` under a supervisor that dies before recording it.

A stand-in supervisor (a small Python process) starts the runtime as the real
one does (``AGENT_RUNTIME_HOME`` and ``AGENT_RUNTIME_SUPERVISOR`` in its
environment) and, in one case, records it in ``child.pid``; in the other it is
SIGKILLed first. A runtime nobody recorded could not be found and stopped by
the next supervisor, so it must exit having done nothing; a recorded one
converges as usual.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from agent_runtime import supervisor as sv
from tests.harness import wait_until
from tests.harness.procs import child_env
from tests.runtime.conftest import MakeSandbox

STAND_IN = """
import json, os, subprocess, sys, time
home, log, record = sys.argv[1], sys.argv[2], sys.argv[3] == "record"
env = dict(os.environ, {home_env}=home, {supervisor_env}=str(os.getpid()))
with open(log, "ab") as out:
    child = subprocess.Popen(sys.argv[4:], env=env, stdout=out, stderr=subprocess.STDOUT)
if record:
    with open(os.path.join(home, "{child_pid}"), "w") as f:
        json.dump({{"pid": child.pid, "version": "test"}}, f)
print(child.pid, flush=True)
time.sleep(600)
"""


def _start_stand_in(
    home: Path, log: Path, record: bool, argv: list[str]
) -> tuple[subprocess.Popen[str], int]:
    """The stand-in supervisor and the pid of the runtime it started."""
    script = STAND_IN.format(home_env=sv.HOME_ENV, supervisor_env=sv.SUPERVISOR_ENV,
                             child_pid=sv.CHILD_PID)  # fmt: skip
    mode = "record" if record else "forget"
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(home), str(log), mode, *argv],
        env=child_env(), stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize("record", [False, True], ids=["killed-before-recording", "recorded"])
def test_a_runtime_runs_only_once_its_supervisor_recorded_it(
    make_sandbox: MakeSandbox, tmp_path: Path, record: bool
) -> None:
    sb = make_sandbox()
    sb.publish("3.0.0")
    sb.write_plan("3.0.0")
    before = sb.snapshot()
    home, log = tmp_path / "home", tmp_path / "runtime.log"
    home.mkdir()
    argv = sb.cli_argv("converge", "--once", "--plan", str(sb.plan_path))
    stand_in, runtime = _start_stand_in(home, log, record, argv)
    try:
        if not record:
            stand_in.kill()
            stand_in.wait(10)
        wait_until("the runtime to exit", lambda: _gone(runtime), timeout=60)
    finally:
        stand_in.kill()
        stand_in.wait(10)
    text = log.read_text()
    if record:
        assert "result: committed" in text, text
        assert sb.installed_release() == "3.0.0"
    else:
        assert "the supervisor that started this runtime is gone" in text, text
        assert sb.snapshot() == before  # the agent untouched
        assert not sb.state.exists() or not any(sb.state.iterdir()), text
