"""The runtime supervisor for real: its process, runtimes it starts, kills at any point.

Each runtime version here is a small script at ``versions/<v>/bin/agent-runtime``
that behaves as its ``mode`` file says: ``good`` confirms a trial of itself
(as a real runtime does after its first check-in), ``silent`` never does,
``broken`` exits with 3 at start; each says ``runtime <v> up`` on stdout. The
current runtime hands over when a test drops an ``offer`` file naming a
version: it writes the trial and exits with SWITCH_EXIT, as
``agent_runtime.runtime_update`` does. The supervisor is the real file, run
with this interpreter; kills are real SIGKILLs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from agent_runtime import supervisor as sv
from tests.harness import wait_until

FAKE_RUNTIME = """#!{python}
import json, os, pathlib, signal, sys, time, uuid
from agent_runtime import supervisor as sv
if not sv.may_run():  # as the real runtime's `converge` does first
    sys.exit(0)
home = pathlib.Path(os.environ["AGENT_RUNTIME_HOME"])
version = pathlib.Path(__file__).parents[1].name
mode = (home / "versions" / version / "mode").read_text().strip()
with open(home / "runs.log", "a") as f:
    f.write(f"{{version}} {{os.getpid()}}\\n")
print(f"runtime {{version}} up", flush=True)
if mode == "broken":
    sys.exit(3)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

def write(path, data):
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)

while True:
    trial = json.loads((home / "runtime.json").read_text()).get("trial")
    if mode == "good" and trial and trial.get("started") and trial["version"] == version:
        write(home / "confirmed.json", {{"trial": trial["id"]}})
    offer = home / "offer"
    if offer.exists() and not trial:
        target = offer.read_text().strip()
        offer.unlink()
        write(home / "runtime.json", {{"current": version, "trial": {{"id": uuid.uuid4().hex,
              "version": target, "previous": version, "started": False}}}})
        sys.exit({switch})
    time.sleep(0.05)
"""

#: How long a step of the trial-recording test may take (bounded waits, not asserted times).
WAIT = 90.0


class Home:
    """A runtime home with fake runtimes, and the supervisor process over it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.proc: subprocess.Popen[bytes] | None = None
        (root / sv.VERSIONS).mkdir(parents=True)
        self.log = root / "supervisor.log"

    def add(self, version: str, mode: str) -> None:
        """A runtime ``version`` behaving as ``mode``."""
        exe = sv.runtime_exe(self.root, version)
        exe.parent.mkdir(parents=True)
        exe.write_text(FAKE_RUNTIME.format(python=sys.executable, switch=sv.SWITCH_EXIT))
        exe.chmod(0o755)
        (self.root / sv.VERSIONS / version / "mode").write_text(mode)

    def offer(self, version: str) -> None:
        """Have the current runtime hand over to ``version``; written whole, by rename,
        so the runtime never reads the file half-written."""
        tmp = self.root / ".offer.tmp"
        tmp.write_text(version)
        os.replace(tmp, self.root / "offer")

    def state(self) -> dict[str, object]:
        return sv.read_json(self.root / sv.STATE) or {}

    def outcome(self) -> dict[str, object]:
        return sv.read_json(self.root / sv.OUTCOME) or {}

    def start(self, confirm_timeout: float = 30.0) -> None:
        """Start the supervisor (the real file, a new process)."""
        cmd = [sys.executable, str(Path(sv.__file__)), "--home", str(self.root),
               "--confirm-timeout", str(confirm_timeout), "--", "converge"]  # fmt: skip
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        """SIGKILL the supervisor alone."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM the supervisor (it stops its runtime) and kill leftovers."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
        for p in self.runtimes():
            p.kill()

    def runtimes(self) -> list[psutil.Process]:
        """Fake runtime processes of this home that are alive."""
        found = []
        for p in psutil.process_iter(["cmdline", "status"]):
            cmd = " ".join(p.info.get("cmdline") or [])
            if str(self.root / sv.VERSIONS) in cmd and p.info.get("status") != "zombie":
                found.append(p)
        return found

    def running(self) -> list[str]:
        """Versions of the runtimes running now."""
        versions = str(self.root / sv.VERSIONS)
        found = []
        for p in self.runtimes():
            try:
                exe = next(a for a in p.cmdline() if a.startswith(versions))
            except (psutil.Error, StopIteration):
                continue
            found.append(Path(exe).parents[1].name)
        return sorted(found)


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Home]:
    h = Home(tmp_path / "home")
    h.add("1.0", "good")
    (h.root / sv.STATE).write_text(json.dumps({"current": "1.0", "trial": None}))
    yield h
    h.stop()


def _only(home: Home, version: str) -> bool:
    return home.running() == [version]


def test_a_good_runtime_takes_over_and_confirms(home: Home) -> None:
    home.add("2.0", "good")
    home.add("0.9", "good")  # an older version: removed once 2.0 is confirmed
    home.start()
    wait_until("1.0 to run", lambda: _only(home, "1.0"), timeout=30)
    home.offer("2.0")
    wait_until("2.0 confirmed", lambda: home.outcome().get("result") == "confirmed", timeout=30)
    # the outcome is written before the state: the state follows within the same commit
    wait_until("2.0 current", lambda: home.state() == {"current": "2.0", "trial": None,
                                                       "previous": "1.0"}, timeout=10)  # fmt: skip
    assert home.outcome()["target"] == "2.0"
    wait_until("2.0 alone to run", lambda: _only(home, "2.0"), timeout=30)
    kept = sorted(p.name for p in (home.root / sv.VERSIONS).iterdir())
    assert kept == ["1.0", "2.0"]  # the new one and the one it replaced


def test_a_runtime_that_exits_at_start_is_reverted(home: Home) -> None:
    home.add("2.0", "broken")
    home.start()
    wait_until("1.0 to run", lambda: _only(home, "1.0"), timeout=30)
    home.offer("2.0")
    wait_until("2.0 reverted", lambda: home.outcome().get("result") == "reverted", timeout=30)
    assert "exited with 3" in str(home.outcome()["detail"])
    assert home.state() == {"current": "1.0", "trial": None}
    wait_until("1.0 to run again", lambda: _only(home, "1.0"), timeout=30)


def test_a_runtime_that_never_checks_in_is_stopped_and_reverted(home: Home) -> None:
    home.add("2.0", "silent")
    home.start(confirm_timeout=2)
    wait_until("1.0 to run", lambda: _only(home, "1.0"), timeout=30)
    home.offer("2.0")
    wait_until("2.0 reverted", lambda: home.outcome().get("result") == "reverted", timeout=30)
    assert "did not check in within 2s" in str(home.outcome()["detail"])
    wait_until("1.0 alone to run again", lambda: _only(home, "1.0"), timeout=30)


def test_killing_the_new_runtime_mid_trial_reverts(home: Home) -> None:
    home.add("2.0", "silent")
    home.start()
    wait_until("1.0 to run", lambda: _only(home, "1.0"), timeout=30)
    home.offer("2.0")
    wait_until("2.0 on trial", lambda: _only(home, "2.0"), timeout=30)
    for p in home.runtimes():
        p.send_signal(signal.SIGKILL)
    wait_until("2.0 reverted", lambda: home.outcome().get("result") == "reverted", timeout=30)
    assert "exited with -9" in str(home.outcome()["detail"])
    wait_until("1.0 to run again", lambda: _only(home, "1.0"), timeout=30)


def test_killing_the_supervisor_mid_trial_leaves_the_old_runtime(home: Home) -> None:
    """SIGKILL the supervisor while 2.0 is on trial: 2.0 runs on, orphaned. The restarted
    supervisor stops it and reverts the unconfirmed trial; exactly one runtime runs."""
    home.add("2.0", "silent")
    home.start()
    wait_until("1.0 to run", lambda: _only(home, "1.0"), timeout=30)
    home.offer("2.0")
    wait_until("2.0 on trial", lambda: _only(home, "2.0"), timeout=30)
    home.kill()
    assert home.running() == ["2.0"]  # orphaned
    home.start()
    wait_until("2.0 reverted", lambda: home.outcome().get("result") == "reverted", timeout=30)
    assert "restarted before the runtime confirmed" in str(home.outcome()["detail"])
    wait_until("1.0 alone to run", lambda: _only(home, "1.0"), timeout=30)


def test_a_runtime_its_supervisor_died_before_recording_exits_by_itself(home: Home) -> None:
    """The supervisor is SIGKILLed after starting the trial's runtime but before recording
    it in child.pid (held there by a FIFO where its temporary file goes), so no successor
    could find that runtime: it exits on its own, and the next supervisor reverts the
    trial and runs 1.0 alone."""
    home.add("2.0", "good")
    # Generous: under CI load a step once took more than 30 s; run alone, the first
    # pytest run of this test took 24 s and later ones 1.3 s.
    home.start()
    wait_until("1.0 to run", lambda: _only(home, "1.0"), timeout=WAIT)
    assert home.proc is not None
    wait_until("1.0 to be recorded", lambda: sv.read_json(home.root / sv.CHILD_PID) is not None,
               timeout=WAIT)  # fmt: skip
    os.mkfifo(home.root / f".{sv.CHILD_PID}.tmp-{home.proc.pid}")  # open() blocks on it
    home.offer("2.0")
    wait_until("2.0 to start", lambda: home.running() == ["2.0"], timeout=WAIT)
    trial = home.state().get("trial")
    assert isinstance(trial, dict) and trial.get("started"), trial
    home.kill()
    wait_until("the unrecorded 2.0 to exit", lambda: home.running() == [], timeout=WAIT)
    assert "2.0" not in (home.root / "runs.log").read_text()  # it did nothing
    home.start()
    wait_until("2.0 reverted", lambda: home.outcome().get("result") == "reverted", timeout=WAIT)
    wait_until("1.0 alone to run", lambda: _only(home, "1.0"), timeout=WAIT)


def test_killing_the_supervisor_between_handover_and_trial_start(home: Home) -> None:
    """The old runtime wrote the trial and exited, the supervisor died before starting it:
    the next supervisor starts the trial as if nothing happened."""
    home.add("2.0", "good")
    trial = {"id": "t1", "version": "2.0", "previous": "1.0", "started": False}
    (home.root / sv.STATE).write_text(json.dumps({"current": "1.0", "trial": trial}))
    home.start()
    wait_until("2.0 confirmed", lambda: home.outcome().get("result") == "confirmed", timeout=30)
    wait_until("2.0 alone to run", lambda: _only(home, "2.0"), timeout=30)


def test_a_confirmed_trial_found_after_a_kill_is_committed(home: Home) -> None:
    """Killed after the new runtime confirmed but before the commit: completed forwards."""
    home.add("2.0", "silent")
    trial = {"id": "t2", "version": "2.0", "previous": "1.0", "started": True}
    (home.root / sv.STATE).write_text(json.dumps({"current": "2.0", "trial": trial}))
    (home.root / sv.CONFIRMED).write_text(json.dumps({"trial": "t2"}))
    home.start()
    wait_until("2.0 to run", lambda: _only(home, "2.0"), timeout=30)
    assert home.state()["current"] == "2.0" and home.state()["trial"] is None
    assert home.outcome()["result"] == "confirmed"


def test_a_lost_state_file_falls_back_to_a_runnable_version(home: Home) -> None:
    """The newest complete version runs; one still being built (killed install) does not."""
    home.add("2.0", "good")
    home.add("10.0", "good")
    (home.root / sv.VERSIONS / sv.installing_marker("10.0")).touch()
    (home.root / sv.STATE).write_text("{not json")
    home.start()
    wait_until("2.0 to run", lambda: _only(home, "2.0"), timeout=30)
    assert home.state()["current"] == "2.0"


@pytest.mark.slow
def test_random_kills_always_leave_one_runnable_runtime(home: Home) -> None:
    """Hand over to a broken and a good release while the supervisor and the runtimes are
    SIGKILLed at every stage: after each kill and restart exactly one runtime runs and the
    state names a version that has a runtime."""
    home.add("2.0", "broken")
    home.add("3.0", "good")
    home.start()
    for target in ("2.0", "3.0", "2.0"):
        wait_until("a runtime to run", lambda: len(home.running()) == 1, timeout=30)
        home.offer(target)
        for victim in ("runtime", "supervisor"):
            wait_until("the offer taken", lambda: not (home.root / "offer").exists(), timeout=30)
            if victim == "runtime":
                for p in home.runtimes():
                    p.send_signal(signal.SIGKILL)
            else:
                home.kill()
                home.start()
        # a broken trial may still be running for an instant: wait for the settled state
        alone = lambda: home.running() == [str(home.state()["current"])]  # noqa: E731
        wait_until("the current runtime alone to run", alone, timeout=30)
        assert sv.runtime_exe(home.root, str(home.state()["current"])).exists()
    assert os.path.exists(home.root / sv.OUTCOME)


def test_a_trial_of_a_version_without_a_runtime_is_reverted(home: Home) -> None:
    """The runtime home lost the trial's venv (pruned, deleted): nothing crashes, the
    previous runtime runs and the outcome says why."""
    home.start()
    wait_until("1.0 to run", lambda: _only(home, "1.0"), timeout=30)
    home.offer("4.0")  # no versions/4.0
    wait_until("4.0 reverted", lambda: home.outcome().get("result") == "reverted", timeout=30)
    assert home.outcome()["detail"] == "runtime 4.0 is not installed"
    wait_until("1.0 to run again", lambda: _only(home, "1.0"), timeout=30)
    assert home.proc is not None and home.proc.poll() is None


def test_a_current_version_without_a_runtime_falls_back(home: Home) -> None:
    home.add("2.0", "good")
    (home.root / sv.STATE).write_text(json.dumps({"current": "5.0", "trial": None}))
    home.start()
    wait_until("2.0 to run", lambda: _only(home, "2.0"), timeout=30)
    assert home.state()["current"] == "2.0"
