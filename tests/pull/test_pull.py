"""Pull mode against a stub server: backoff, Retry-After, enrollment, events, server health."""

from __future__ import annotations

import json
import random
import signal
import socket
import subprocess
import threading
import time

import pytest

from agent_runtime.config import load_config
from agent_runtime.pull import Backoff, PullLoop, poll_delay
from tests.harness.procs import wait_until
from tests.harness.sandbox import Sandbox
from tests.pull.conftest import offer, pull_config
from tests.pull.stub import Answer, running_stub


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _loop(sb: Sandbox, lines: list[str] | None = None) -> PullLoop:
    sink = lines if lines is not None else []
    return PullLoop(load_config(sb.config_path), out=sink.append, rng=random.Random(7))


def test_backoff_is_full_jitter_under_a_growing_capped_ceiling() -> None:
    """The n-th failure waits within [0, min(cap, base*2^(n-1))]; success resets; Retry-After
    is a floor."""
    b = Backoff(base=1.0, cap=8.0, rng=random.Random(1))
    delays = [b.failed() for _ in range(200)]
    for n, d in enumerate(delays, start=1):
        assert 0 <= d <= min(8.0, 2 ** (n - 1))
    assert max(delays[5:]) > 4.0  # the ceiling did grow to the cap, jitter spreads below it
    assert len({round(d, 6) for d in delays}) > 150  # full jitter, not a fixed schedule
    b.succeeded()
    assert b.failed() <= 1.0
    assert b.failed(retry_after=30.0) >= 30.0


def test_poll_delay_spreads_by_at_most_a_tenth() -> None:
    """The next check-in comes after the server's interval plus at most 10 % (and the jitter)."""
    rng = random.Random(3)
    delays = [poll_delay(10.0, 30.0, rng) for _ in range(100)]
    assert all(10.0 <= d <= 11.0 for d in delays) and len(set(delays)) > 90
    assert all(5.0 <= poll_delay(5.0, 0.1, rng) <= 5.1 for _ in range(50))


def test_retry_after_is_honoured_and_the_agent_left_alone(running_device: Sandbox) -> None:
    """A 503 with Retry-After makes the loop wait at least that long; the agent keeps running."""
    sb = running_device
    pid, files, state = sb.agent_pid(), sb.snapshot(), sb.state_json()
    with running_stub() as stub:
        pull_config(sb, stub.url)
        stub.checkins.extend([Answer(503, {"detail": "busy"}, {"Retry-After": "3"})] * 2)
        loop = _loop(sb)
        delay, code = loop.step()
        assert delay >= 3.0 and code == 1
        delay, code = loop.step()
        assert delay >= 3.0 and code == 1
        assert len(stub.paths("POST", "/checkin")) == 2
    assert sb.agent_pid() == pid and sb.snapshot() == files
    assert sb.state_json()["installed"] == state["installed"] == "3.0.0"


def test_unreachable_server_backs_off_with_full_jitter(running_device: Sandbox) -> None:
    """With nothing listening, each step's delay stays under the doubling ceiling and the cap."""
    sb = running_device
    pull_config(sb, f"http://127.0.0.1:{_closed_port()}", backoff_base="0.1s", backoff_cap="1s")
    (sb.base / "token").write_text("token-1\n")
    loop = _loop(sb)
    pid = sb.agent_pid()
    delays = [loop.step() for _ in range(8)]
    for n, (delay, code) in enumerate(delays, start=1):
        assert code == 1 and 0 <= delay <= min(1.0, 0.1 * 2 ** (n - 1))
    assert loop.backoff.failures == 8
    assert sb.agent_pid() == pid


def test_enrolls_once_keeps_token_0600_and_reenrolls_after_401(running_device: Sandbox) -> None:
    """No token: the runtime enrolls and writes the token with mode 0600; a later 401 drops it
    and the next step enrolls again."""
    sb = running_device
    with running_stub() as stub:
        pull_config(sb, stub.url)
        loop = _loop(sb)
        _, code = loop.step()
        assert code == 0 and stub.enrollments == 1
        token_file = sb.base / "token"
        assert token_file.read_text().strip() == "token-1"
        assert token_file.stat().st_mode & 0o777 == 0o600
        loop.step()
        assert stub.enrollments == 1  # the kept token is used
        stub.token = "token-2"  # the server forgot the device
        _, code = loop.step()
        assert code == 1 and not token_file.exists()
        _, code = loop.step()
        assert code == 0 and stub.enrollments == 2
        assert token_file.read_text().strip() == "token-2"


def test_missing_secret_is_a_config_error_and_changes_nothing(running_device: Sandbox) -> None:
    """Without token or enrollment secret the step reports it and the agent is untouched."""
    sb = running_device
    with running_stub() as stub:
        pull_config(sb, stub.url, enrollment_secret=None)
        lines: list[str] = []
        pid = sb.agent_pid()
        _, code = _loop(sb, lines).step()
        assert code == 1 and any("no invite code or enrollment secret" in line for line in lines)
        assert stub.requests == [] and sb.agent_pid() == pid


@pytest.mark.slow
def test_server_down_real_runtime_leaves_agent_alone(running_device: Sandbox) -> None:
    """A real `agent-runtime converge` with its server down keeps trying and never touches the
    running agent (same pid, same files); SIGTERM ends it cleanly."""
    sb = running_device
    pull_config(sb, f"http://127.0.0.1:{_closed_port()}")
    (sb.base / "token").write_text("token-1\n")
    pid, files = sb.agent_pid(), sb.snapshot()
    log = sb.base / "converge.log"
    with log.open("w") as out_file:
        proc = subprocess.Popen(
            sb.cli_argv("converge"), env=sb.cli_env(), stdout=out_file, stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
    try:
        # Signal only once the runtime is in its retry loop (its SIGTERM handler is up):
        # on a loaded machine the interpreter alone can take seconds to start.
        wait_until(
            "three failed check-ins",
            lambda: log.read_text().count("server unavailable") >= 3,
            timeout=60,
        )
        assert proc.poll() is None
        assert sb.agent_pid() == pid and sb.snapshot() == files
        sb.wait_heartbeat("3.0.0")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    out = log.read_text()
    assert proc.returncode == 0, out
    assert out.count("server unavailable") >= 3, out
    assert sb.agent_pid() == pid


@pytest.mark.parametrize("health", ["heartbeat_file", "server"])
def test_offered_plan_runs_reports_phases_and_result(running_device: Sandbox, health: str) -> None:
    """An offered update runs through the executor; each phase is posted as a step event,
    the result is reported at once; the `server` health kind confirms through the server's
    heartbeat record."""
    sb = running_device
    if health == "server":
        sb.publish("3.0.1", mutate=lambda d: d.update(
            health_check={"kind": "server", "timeout": "6s", "max_age": "3s"}))  # fmt: skip
    with running_stub() as stub:
        pull_config(sb, stub.url)
        stub.checkins.append(Answer(200, offer(stub, sb, "3.0.1", "3.0.0")))
        loop = _loop(sb)
        loop.forwarder.start()
        try:
            delay, code = loop.step()
        finally:
            loop.forwarder.stop()
        assert code == 0 and delay < 0.5
        assert sb.assert_consistent() == "3.0.1"
        steps = [(e["step"], e["status"]) for e in stub.events]
        expected = ["download", "verify", "backup", "swap", "restart", "confirm_heartbeat",
                    "commit"]  # fmt: skip
        assert [s for s, st in steps if st == "ok"] == expected
        assert [s for s, st in steps if st == "started"] == expected
        assert {e["target"] for e in stub.events} == {"3.0.1"}
        report = stub.paths("POST", "/checkin")[-1]
        body = json.loads(report.body)
        assert body["agent_version"] == "3.0.1" and body["agent_running"] is True
        assert body["transaction"]["result"] == "committed"
        assert body["transaction"]["target"] == "3.0.1"
        downloads = stub.paths("GET", "/manifest") + stub.paths("GET", "/v1/artifacts/")
        assert all(r.headers.get("Authorization") == "Bearer token-1" for r in downloads)
        if health == "server":
            assert stub.paths("GET", "/heartbeat")
            assert any(h["version"] == "3.0.1" for h in stub.heartbeats)


def test_failed_event_posts_never_fail_the_transaction(running_device: Sandbox) -> None:
    """Events the server refuses with 503 are kept and sent later; the update still commits."""
    sb = running_device
    with running_stub() as stub:
        pull_config(sb, stub.url)
        stub.checkins.append(Answer(200, offer(stub, sb, "3.0.1", "3.0.0")))
        stub.event_answers.extend([Answer(503, {"detail": "down"})] * 50)
        loop = _loop(sb)
        _, code = loop.step()
        assert code == 0 and sb.assert_consistent() == "3.0.1"
        assert stub.events == [] and loop.events.pending() == 14
        stub.event_answers.clear()
        assert loop.events.flush()
        assert len(stub.events) == 14 and loop.events.pending() == 0


def test_loop_stops_on_request(running_device: Sandbox) -> None:
    """run() returns soon after the stop event is set, with its threads stopped."""
    sb = running_device
    with running_stub() as stub:
        pull_config(sb, stub.url)
        loop = _loop(sb)
        stop = threading.Event()
        t = threading.Thread(target=loop.run, args=(stop,))
        t.start()
        time.sleep(1.0)
        stop.set()
        t.join(10)
        assert not t.is_alive()
        assert len(stub.paths("POST", "/checkin")) >= 3


def test_hostile_server_offering_a_kept_old_release_is_refused(running_device: Sandbox) -> None:
    """A server that offers 3.0.0, still in the device's backup, when the installed 3.0.1 does
    not authorise rolling back to it gets a refusal; no file, process or version moves."""
    sb = running_device
    sb.publish("3.0.1", mutate=lambda d: d.update(rollback_to=[]))
    lines: list[str] = []
    with running_stub() as stub:
        pull_config(sb, stub.url)
        stub.checkins.append(Answer(200, offer(stub, sb, "3.0.1", "3.0.0")))
        loop = _loop(sb, lines)
        loop.forwarder.start()
        try:
            assert loop.step()[1] == 0
            assert sb.assert_consistent() == "3.0.1"
            pid, before = sb.agent_pid(), sb.snapshot()
            stub.checkins.append(Answer(200, offer(stub, sb, "3.0.0", "3.0.1")))
            _, code = loop.step()
        finally:
            loop.forwarder.stop()
    assert code != 0
    assert any("refused to restore 3.0.0" in line for line in lines), lines
    assert sb.state_json()["last_result"] == "refused"
    assert sb.assert_consistent() == "3.0.1"
    assert sb.snapshot() == before and sb.agent_pid() == pid
