"""Pull mode: converge periodically against ``engine serve`` instead of a plan file.

Each loop the runtime recovers an open journal (as always), checks in with
its report, and runs the plan the server answers with through the ordinary
converge (``ServerPlanSource`` is a ``PlanSource``). Around it:

- enrollment: without a token file the runtime trades the enrollment secret
  for a token and keeps it (mode 0600); a token the server no longer knows
  (401) is dropped and the device enrolls again;
- timing: the next check-in comes after the server's ``poll_interval`` plus a
  small random share of the config's jitter; while the server is unreachable
  the delay grows exponentially with full jitter up to ``backoff_cap``, and a
  Retry-After (429/503) is honoured;
- step events: every phase of a transaction is queued as a ``StepEvent`` and
  sent in batches by a background thread; a failed post is retried later and
  never fails the transaction;
- heartbeats: a background thread forwards the agent's heartbeat file to the
  server, and the ``server`` health check kind confirms health through the
  server's record of it (``ServerHealth``).

When the server is down nothing on the device changes: no check-in means no
plan, and without a plan the runtime neither restarts nor touches the agent.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from agent_runtime._fsutil import fsync_dir
from agent_runtime.config import DeviceConfig
from agent_runtime.converge import ConvergeResult, DesiredRelease, Runtime, exit_code
from agent_runtime.effects import Clock, HealthProbe, HealthResult, ServiceManager
from agent_runtime.errors import (
    AgentRuntimeError,
    ConfigError,
    JournalError,
    NoPlanOfferedError,
    ServerAuthError,
    ServerError,
    ServerProtocolError,
    ServerUnavailableError,
    StateError,
)
from agent_runtime.health import ExitReporter, Health
from agent_runtime.journal import JournalRecord
from agent_runtime.phases import Phase
from agent_runtime.server_client import ServerClient
from agent_runtime.state import Result
from inventory.duration import format_duration
from inventory.version import Version, VersionError
from states.manifest import HealthCheck, HealthCheckKind
from states.plan import ReleaseRef, StepName
from states.protocol import CheckinRequest, CheckinResponse, Heartbeat, StepEvent, TransactionReport

__all__ = [
    "SECRET_ENV",
    "Backoff",
    "EventSender",
    "HeartbeatForwarder",
    "PullLoop",
    "ServerHealth",
    "ServerPlanSource",
    "TokenFile",
    "poll_delay",
    "run_pull",
    "runtime_version",
]

#: Environment variable holding the enrollment secret when the config names none.
SECRET_ENV = "AGENT_RUNTIME_ENROLLMENT_SECRET"
#: Delay before the check-in that reports a transaction that just ended.
REPORT_DELAY = 0.1
#: Events kept while the server cannot take them; older ones are dropped beyond this.
MAX_QUEUED_EVENTS = 1000
#: The protocol's batch limit (``EventBatch.events``).
BATCH = 100

STEP_OF_PHASE: dict[Phase, str] = {
    Phase.DOWNLOAD: StepName.DOWNLOAD.value,
    Phase.VERIFY: StepName.VERIFY.value,
    Phase.BACKUP: StepName.BACKUP.value,
    Phase.SWAP: StepName.SWAP.value,
    Phase.RESTART: StepName.RESTART.value,
    Phase.CONFIRM: StepName.CONFIRM_HEARTBEAT.value,
    Phase.COMMIT: StepName.COMMIT.value,
}


def runtime_version() -> str:
    """The installed runtime package's version ("unknown" when not installed as a package)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fleet-rollout")
    except PackageNotFoundError:
        return "unknown"


# -- timing ---------------------------------------------------------------------------------


@dataclass
class Backoff:
    """Exponential backoff with full jitter: the n-th failure waits uniform(0, min(cap, base·2ⁿ⁻¹)).

    A server's Retry-After is a floor: the wait is never shorter than it asks.
    """

    base: float
    cap: float
    rng: random.Random = field(default_factory=random.Random)
    failures: int = 0

    def failed(self, retry_after: float | None = None) -> float:
        """Count a failure; seconds to wait before the next try."""
        self.failures += 1
        ceiling = min(self.cap, self.base * 2 ** min(self.failures - 1, 60))
        delay = self.rng.uniform(0, ceiling)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return delay

    def succeeded(self) -> None:
        """The server answered: start from the base again next time."""
        self.failures = 0


def poll_delay(poll_interval: float, jitter: float, rng: random.Random) -> float:
    """Seconds until the next check-in: the server's interval plus up to 10 % more (at most
    ``jitter``), so that devices started together drift apart."""
    spread = min(jitter, 0.1 * poll_interval)
    return max(poll_interval, 0.0) + rng.uniform(0, max(spread, 0.0))


# -- the token ------------------------------------------------------------------------------


class TokenFile:
    """The device token on disk: one line, mode 0600, replaced atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> str | None:
        """The token, or None when there is no (non-empty) token file."""
        try:
            token = self.path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise ConfigError(f"{self.path}: cannot read the device token: {e}") from e
        return token or None

    def save(self, token: str) -> None:
        """Write the token readable by the owner only."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(token + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        fsync_dir(self.path.parent)

    def drop(self) -> None:
        """Forget the token (the server no longer accepts it)."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def enrollment_secret(config: DeviceConfig) -> str | None:
    """The enrollment secret: from the config's file, the config, or ``$AGENT_RUNTIME_...``."""
    settings = config.server
    if settings is None:
        return None
    if settings.enrollment_secret_file is not None:
        try:
            return settings.enrollment_secret_file.read_text(encoding="utf-8").strip() or None
        except OSError as e:
            raise ConfigError(
                f"{settings.enrollment_secret_file}: cannot read the enrollment secret: {e}"
            ) from e
    return settings.enrollment_secret or os.environ.get(SECRET_ENV) or None


# -- background senders ---------------------------------------------------------------------


class _Periodic:
    """A daemon thread calling ``tick`` every ``interval`` seconds until stopped."""

    def __init__(self, name: str, interval: float) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and wait for it (bounded)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):  # a sender never takes the runtime down
                self.tick()

    def tick(self) -> None:
        """One round of work."""
        raise NotImplementedError


class EventSender(_Periodic):
    """Queues step events and posts them in batches; best-effort, never raises."""

    def __init__(
        self,
        client: ServerClient,
        token: Callable[[], str | None],
        *,
        interval: float = 0.5,
        out: Callable[[str], None] = print,
    ) -> None:
        super().__init__("step-events", interval)
        self.client = client
        self.token = token
        self.out = out
        self._queue: deque[StepEvent] = deque(maxlen=MAX_QUEUED_EVENTS)
        self._lock = threading.Lock()
        self._failing = False
        self.sent = 0

    def add(self, event: StepEvent) -> None:
        """Queue one event (the oldest is dropped when the queue is full)."""
        with self._lock:
            self._queue.append(event)

    def pending(self) -> int:
        """Events not yet accepted by the server."""
        with self._lock:
            return len(self._queue)

    def tick(self) -> None:
        """Send what is queued."""
        self.flush()

    def flush(self) -> bool:
        """Send queued events in batches; True when the queue is empty afterwards."""
        with self._lock:
            while self._queue:
                token = self.token()
                if token is None:
                    return False
                batch = list(self._queue)[:BATCH]
                self.client.token = token
                try:
                    self.client.post_events(batch)
                except ServerProtocolError as e:
                    # the server refuses this batch as malformed: resending cannot help
                    self.out(f"step events dropped: {e}")
                except ServerError as e:
                    if not self._failing:
                        self.out(f"step events kept for later: {e}")
                    self._failing = True
                    return False
                else:
                    self.sent += len(batch)
                for _ in batch:
                    self._queue.popleft()
                self._failing = False
            return True


def read_agent_heartbeat(path: Path) -> Heartbeat | None:
    """The agent's heartbeat file as a protocol ``Heartbeat``; None when missing or malformed."""
    try:
        data = json.loads(path.read_bytes())
        if not isinstance(data, dict):
            return None
        pid = data.get("pid")
        return Heartbeat(
            version=Version.parse(str(data["version"])),
            at=datetime.fromisoformat(str(data["time"])),
            pid=pid if isinstance(pid, int) else None,
        )
    except (OSError, ValueError, KeyError, VersionError, ValidationError):
        return None


class HeartbeatForwarder(_Periodic):
    """Posts the agent's newest heartbeat to the server whenever it changed."""

    def __init__(
        self,
        client: ServerClient,
        token: Callable[[], str | None],
        paths: Callable[[], list[Path]],
        *,
        interval: float,
    ) -> None:
        super().__init__("heartbeat-forwarder", interval)
        self.client = client
        self.token = token
        self.paths = paths
        self._lock = threading.Lock()
        self.last_sent: Heartbeat | None = None

    def tick(self) -> None:
        """Forward now if there is a newer heartbeat."""
        self.forward()

    def forward(self) -> Heartbeat | None:
        """Post the newest heartbeat if it is newer than the last one posted; what was posted."""
        with self._lock:
            token = self.token()
            if token is None:
                return None
            beats = [b for b in (read_agent_heartbeat(p) for p in self.paths()) if b is not None]
            beats = [b for b in beats if b.at.tzinfo is not None]
            if not beats:
                return None
            newest = max(beats, key=lambda b: b.at)
            if self.last_sent is not None and newest.at <= self.last_sent.at:
                return None
            self.client.token = token
            try:
                self.client.post_heartbeat(newest)
            except ServerError:
                return None
            self.last_sent = newest
            return newest


# -- the server health check kind -----------------------------------------------------------


class ServerHealth:
    """A ``HealthProbe``: the ``server`` kind asks the server for its record of the agent's
    heartbeat; every other kind goes to the local probe."""

    def __init__(
        self,
        local: HealthProbe,
        service: ServiceManager,
        record: Callable[[], Heartbeat | None],
        *,
        forward: Callable[[], object] | None = None,
        poll_interval: float = 0.5,
    ) -> None:
        self.local = local
        self.service = service
        self.record = record
        self.forward = forward
        self.poll_interval = poll_interval

    def wait_healthy(
        self, check: HealthCheck, expected: Version, since: datetime, clock: Clock
    ) -> HealthResult:
        """Poll the server's record until it shows ``expected`` beating after ``since`` and
        within ``max_age``, or ``check.timeout`` passes."""
        if check.kind is not HealthCheckKind.SERVER:
            return self.local.wait_healthy(check, expected, since, clock)
        timeout = check.timeout.total_seconds()
        start = clock.monotonic()
        while True:
            result = self._once(check, expected, since, clock)
            if result.healthy:
                return result
            elapsed = clock.monotonic() - start
            if isinstance(self.service, ExitReporter) and not self.service.is_running():
                ended = self.service.last_exit()
                if ended is not None:
                    return HealthResult(
                        False, f"process {ended.describe()} after {elapsed:.1f}s; {result.detail}"
                    )
            if elapsed >= timeout:
                return HealthResult(
                    False, f"{result.detail} after {format_duration(check.timeout)}"
                )
            clock.sleep(min(self.poll_interval, max(timeout - elapsed, 0.0)))

    def _once(
        self, check: HealthCheck, expected: Version, since: datetime, clock: Clock
    ) -> HealthResult:
        if self.forward is not None:
            self.forward()
        try:
            beat = self.record()
        except ServerError as e:
            return HealthResult(False, f"cannot read the server's heartbeat record: {e}")
        if beat is None:
            return HealthResult(False, "the server has no heartbeat of this device")
        if beat.version != expected:
            return HealthResult(False, f"the server's last heartbeat says {beat.version}")
        if beat.at <= since:
            return HealthResult(
                False, f"the server's last heartbeat ({beat.at.isoformat()}) is from before "
                f"the restart at {since.isoformat()}",
            )  # fmt: skip
        age = clock.now() - beat.at
        if age > check.max_age:
            return HealthResult(
                False, f"the server's last heartbeat is {age.total_seconds():.1f}s old "
                f"(max_age {format_duration(check.max_age)})",
            )  # fmt: skip
        return HealthResult(
            True, f"server recorded a heartbeat of {expected} at {beat.at.isoformat()}"
        )


# -- the plan source ------------------------------------------------------------------------


class ServerPlanSource:
    """A ``PlanSource`` that checks in and returns the plan the server answers with."""

    def __init__(self, loop: PullLoop) -> None:
        self.loop = loop
        self.last: DesiredRelease | None = None

    def fetch(self) -> DesiredRelease:
        """Check in; NoPlanOfferedError when the answer has no plan, ServerError when the
        server cannot be used."""
        answer = self.loop.check_in()
        self.last = None
        if answer.plan is None:
            raise NoPlanOfferedError("the server offers no plan")
        release = answer.release
        if release is not None:
            release = self._absolute(release)
        self.loop.authorize_fetches(release)
        self.last = DesiredRelease(answer.plan, release, None)
        return self.last

    def _absolute(self, ref: ReleaseRef) -> ReleaseRef:
        client = self.loop.client
        return ref.model_copy(
            update={
                "manifest": client.absolute(ref.manifest),
                "signature": client.absolute(ref.signature),
                "artifacts": client.absolute(ref.artifacts),
            }
        )


# -- the loop -------------------------------------------------------------------------------


class PullLoop:
    """One device's pull-mode runtime: enroll, check in, converge, report."""

    def __init__(
        self,
        config: DeviceConfig,
        *,
        out: Callable[[str], None] = print,
        rng: random.Random | None = None,
    ) -> None:
        if config.server is None:
            raise ConfigError("pull mode needs a 'server' section in the device config")
        from agent_runtime.services import make_service_manager

        self.config = config
        self.settings = config.server
        self._said = 0

        def say(line: str) -> None:
            self._said += 1
            out(line)

        self.out = say
        self.rng = rng or random.Random()
        timeout = self.settings.timeout.total_seconds()
        self.tokens = TokenFile(self.settings.token_file)
        self.token: str | None = self.tokens.load()
        self.client = ServerClient(self.settings.url, config.device, token=self.token,
                                   timeout=timeout)  # fmt: skip
        self.service = make_service_manager(config.service, default_state_dir=config.state_dir)
        self.forwarder = HeartbeatForwarder(
            ServerClient(self.settings.url, config.device, timeout=timeout),
            lambda: self.token,
            self.heartbeat_paths,
            interval=self.settings.heartbeat_interval.total_seconds(),
        )
        self.events = EventSender(
            ServerClient(self.settings.url, config.device, timeout=timeout),
            lambda: self.token,
            out=self.out,
        )
        probe_client = ServerClient(self.settings.url, config.device, timeout=timeout)

        def server_record() -> Heartbeat | None:
            probe_client.token = self.token
            return probe_client.get_heartbeat()

        svc = self.service
        self.runtime = Runtime(
            config,
            service=svc,
            make_probe=lambda d: ServerHealth(
                Health(svc, d, poll_interval=0.1),
                svc,
                server_record,
                forward=self.forwarder.forward,
                poll_interval=0.2,
            ),
            out=self.out,
        )
        self._hook_phases()
        self.source = ServerPlanSource(self)
        self.backoff = Backoff(
            self.settings.backoff_base.total_seconds(),
            self.settings.backoff_cap.total_seconds(),
            self.rng,
        )
        self.report_path = config.state_dir / "pull.json"
        self.poll_interval: float | None = None
        self.transaction: TransactionReport | None = self._load_report()
        self.checkins = 0

    # -- public ---------------------------------------------------------------------------

    def run(self, stop: threading.Event, *, once: bool = False) -> int:
        """Loop until ``stop`` is set (or one round with ``once``); the exit code."""
        self.forwarder.start()
        self.events.start()
        code = 0
        try:
            while not stop.is_set():
                said = self._said
                delay, code = self.step()
                if once:
                    break
                code = 0  # the periodic loop ends on request, not on a round's result
                if self._said != said:  # quiet rounds (nothing offered) log nothing
                    self.out(f"next check-in in {delay:.1f}s")
                stop.wait(delay)
        finally:
            self.forwarder.stop()
            self.events.stop()
            self.events.flush()
            self.client.close()
        return code

    def step(self) -> tuple[float, int]:
        """One round: enroll if needed, check in, converge, report; (seconds to wait, exit code)."""
        try:
            self.ensure_token()
            self.forwarder.forward()
            res = self.runtime.converge_once(self.source)
        except NoPlanOfferedError:
            return self._next_poll(), 0
        except ServerUnavailableError as e:
            delay = self.backoff.failed(e.retry_after)
            why = f" (Retry-After {e.retry_after:g}s)" if e.retry_after is not None else ""
            self.out(f"server unavailable{why}: {e}; the agent is left as it is")
            return delay, 1
        except ServerAuthError as e:
            if e.status == 401 and self.token is not None:
                self.out(f"the server refused this device's token ({e}): enrolling again")
                self.tokens.drop()
                self.token = self.client.token = None
            else:
                self.out(f"refused by the server: {e}")
            return self.backoff.failed(), 1
        except ServerError as e:
            self.out(f"server error: {e}")
            return self.backoff.failed(), 1
        except AgentRuntimeError as e:  # unusable plan, lock held: report and try again later
            self.out(f"converge failed: {e}")
            return self._next_poll(), 1
        self.backoff.succeeded()
        self.out(f"result: {res.result} — {res.detail}")
        ran = self._note_result(res)
        self.events.flush()
        if ran:
            self._report_now()
            return REPORT_DELAY, exit_code(res.result)
        return self._next_poll(), exit_code(res.result)

    def ensure_token(self) -> str:
        """The device token, enrolling first when there is none; ServerError on failure."""
        if self.token is not None:
            return self.token
        secret = enrollment_secret(self.config)
        if secret is None:
            raise ConfigError(
                f"{self.settings.token_file} does not exist and no enrollment secret is "
                "configured (server.enrollment_secret_file, server.enrollment_secret or "
                f"${SECRET_ENV})"
            )
        answer = self.client.enroll(self.config.platform, secret, runtime_version())
        self.tokens.save(answer.token)
        self.token = answer.token
        self.poll_interval = answer.poll_interval
        self.out(f"enrolled {self.config.device} with {self.settings.url}")
        return answer.token

    def check_in(self) -> CheckinResponse:
        """Send this device's report; remember the server's poll interval."""
        self.client.token = self.token
        answer = self.client.checkin(self.report())
        self.poll_interval = answer.poll_interval
        self.checkins += 1
        return answer

    def report(self) -> CheckinRequest:
        """What this device says about itself now."""
        state = self.runtime.states.load()
        try:
            running: bool | None = self.service.is_running()
        except AgentRuntimeError:
            running = None
        return CheckinRequest(
            platform=self.config.platform,
            agent_version=state.installed,
            known_good=state.known_good,
            runtime_version=runtime_version(),
            agent_running=running,
            transaction=self.transaction,
        )

    def authorize_fetches(self, release: ReleaseRef | None) -> None:
        """Send the device token with downloads only when they come from the server itself."""
        headers = self.runtime.fetcher.headers
        headers.pop("Authorization", None)
        if release is None or self.token is None:
            return
        prefix = self.client.url + "/"
        locations = (release.manifest, release.signature, release.artifacts)
        if all(loc.startswith(prefix) for loc in locations):
            headers["Authorization"] = f"Bearer {self.token}"

    def heartbeat_paths(self) -> list[Path]:
        """Heartbeat files of the installed release and of a transaction's target."""
        check = self.config.health_check
        rel = check.path if check.path else "heartbeat.json"
        versions: list[Version] = []
        with contextlib.suppress(JournalError):
            record = self.runtime.journal.load()
            if record is not None and record.is_open:
                versions.append(record.target)
        with contextlib.suppress(StateError):
            installed = self.runtime.states.load().installed
            if installed is not None:
                versions.append(installed)
        paths: list[Path] = []
        for v in versions:
            p = self.runtime.layout.active_dir(v) / rel
            if p not in paths:
                paths.append(p)
        return paths

    # -- internals ------------------------------------------------------------------------

    def _hook_phases(self) -> None:
        """Queue a step event for every phase the executor enters and leaves."""
        self.runtime.executor.fx.on_phase = self._on_phase

    def _on_phase(self, record: JournalRecord, phase: Phase, status: str, detail: str) -> None:
        if phase in (Phase.IDLE, Phase.DONE, Phase.ROLLED_BACK, Phase.FAILED):
            return
        step = STEP_OF_PHASE.get(phase, phase.value.lower())
        self.events.add(
            StepEvent(
                target=record.target,
                step=step,
                status=status,
                detail=detail[:2000] or None,
                at=datetime.now(UTC),
            )
        )

    def _next_poll(self) -> float:
        base = self.poll_interval
        if base is None:
            base = self.config.converge.interval.total_seconds()
        return poll_delay(base, self.config.converge.jitter.total_seconds(), self.rng)

    def _note_result(self, res: ConvergeResult) -> bool:
        """Keep the transaction report of ``res``; True when a transaction ran."""
        desired = self.source.last
        target = desired.device.desired if desired is not None else None
        ran = res.outcome is not None
        if not ran and res.result is Result.NOOP:
            return False
        if not ran and (target is None or res.result is Result.COMMITTED):
            return False
        state = self.runtime.states.load()
        self.transaction = TransactionReport(
            target=target,
            phase=str(res.outcome.phase) if res.outcome is not None else None,
            result=res.result.value,
            attempts=state.attempts.get(str(target), 0) if target is not None else 0,
            detail=res.detail[:2000],
            finished_at=datetime.now(UTC),
        )
        self._save_report()
        return ran

    def _report_now(self) -> None:
        """Check in once to report a finished transaction (its answer waits for the next round)."""
        with contextlib.suppress(ServerError):
            self.check_in()

    def _load_report(self) -> TransactionReport | None:
        try:
            return TransactionReport.model_validate_json(self.report_path.read_bytes())
        except (OSError, ValidationError):
            return None

    def _save_report(self) -> None:
        from agent_runtime._fsutil import atomic_write_bytes

        if self.transaction is not None:
            with contextlib.suppress(OSError):
                atomic_write_bytes(self.report_path, self.transaction.model_dump_json().encode())


def run_pull(
    config: DeviceConfig,
    *,
    stop: threading.Event,
    once: bool = False,
    out: Callable[[str], None] = print,
) -> int:
    """``agent-runtime converge`` against the config's server; the exit code."""
    return PullLoop(config, out=out).run(stop, once=once)
