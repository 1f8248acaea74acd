"""Pull mode: converge periodically against ``engine serve`` instead of a plan file.

Each loop the runtime recovers an open journal (as always), checks in with
its report, and runs the plan the server answers with through the ordinary
converge (``ServerPlanSource`` is a ``PlanSource``). Around it:

- enrollment: without a token file the runtime trades its invite code (deleting
  the code file afterwards) or the enrollment secret for a token and keeps it
  (mode 0600); a token the server no longer knows
  (401) is dropped and the device enrolls again;
- timing: the next check-in comes after the server's ``poll_interval`` plus a
  small random share of the config's jitter; while the server is unreachable
  the delay grows exponentially with full jitter up to ``backoff_cap``, and a
  Retry-After (429/503) is honoured;
- step events: every phase of a transaction is queued as a ``StepEvent`` and
  sent in batches by a background thread; a failed post is retried later and
  never fails the transaction;
- nudges (optional, ``server.nats``): a NATS message on the device's subject
  ends the wait for the next check-in early (``nats_link``); polling stays the
  fallback;
- heartbeats: a background thread forwards the agent's heartbeat file to the
  server, and the ``server`` health check kind confirms health through the
  server's record of it (``ServerHealth``).

When the server is down nothing on the device changes: no check-in means no
plan, and without a plan the runtime neither restarts nor touches the agent.
"""

from __future__ import annotations

import contextlib
import random
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from agent_runtime._memory import release_memory
from agent_runtime._pull_basics import (
    SECRET_ENV,
    Backoff,
    TokenFile,
    bounded_poll_interval,
    poll_delay,
)
from agent_runtime._pull_senders import EventSender, HeartbeatForwarder
from agent_runtime.config import DeviceConfig
from agent_runtime.converge import ConvergeResult, DesiredRelease, Runtime, exit_code
from agent_runtime.enroll import enroll, runtime_version
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
from agent_runtime.facts import facts
from agent_runtime.health import Health
from agent_runtime.journal import JournalRecord
from agent_runtime.nats_link import BusHealth, NatsLink
from agent_runtime.perf import AgentSampler
from agent_runtime.phases import Phase
from agent_runtime.runtime_update import RuntimeHome
from agent_runtime.server_client import ServerClient
from agent_runtime.server_health import ServerHealth
from agent_runtime.state import Result
from agent_runtime.step_events import step_event
from fleetbase.version import Version
from states.keyring import KEYS_PATH
from states.plan import ReleaseRef
from states.protocol import (
    FEATURE_CONFIG,
    FEATURE_RUNTIME_UPDATE,
    AdoptionReport,
    CheckinRequest,
    CheckinResponse,
    Heartbeat,
    RuntimeOffer,
    RuntimeUpdateReport,
    TransactionReport,
)

__all__ = [
    "SECRET_ENV",
    "Backoff",
    "EventSender",
    "HeartbeatForwarder",
    "PullLoop",
    "ServerHealth",
    "ServerPlanSource",
    "TokenFile",
    "enroll",
    "poll_delay",
    "run_pull",
    "runtime_version",
]

#: Why a runtime that does not run under the supervisor refuses a runtime release.
NOT_SUPERVISED = (
    "this runtime does not run under the supervisor, so it cannot update itself: "
    "reinstall it under the supervisor (docs/runtime.md, Runtime self-update)"
)

#: Delay before the check-in that reports a transaction that just ended.
REPORT_DELAY = 0.1
#: Before a wait at least this long, freed memory is handed back to the OS.
IDLE_TRIM_AFTER = 0.5


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
        client = self.loop.client
        keys = (client.absolute(KEYS_PATH), client.absolute(KEYS_PATH + "/signature"))
        self.last = DesiredRelease(answer.plan, release, None, keys, answer.config)
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
        self.sampler = AgentSampler(self.heartbeat_paths)
        probe_client = ServerClient(self.settings.url, config.device, timeout=timeout)

        def server_record() -> Heartbeat | None:
            probe_client.token = self.token
            return probe_client.get_heartbeat()

        svc = self.service
        self.nats: NatsLink | None = None
        if self.settings.nats is not None:
            self.nats = NatsLink(self.settings.nats, config.device, out=self.out, rng=self.rng)
        self.runtime = Runtime(
            config,
            service=svc,
            make_probe=lambda d: BusHealth(
                ServerHealth(
                    Health(svc, d, poll_interval=0.1),
                    svc,
                    server_record,
                    forward=self.forwarder.forward,
                    poll_interval=0.2,
                ),
                self.nats,
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
        #: the runtime home when the supervisor runs this runtime (runtime self-update)
        self.home = RuntimeHome.from_env(runtime_version(), out=self.out)
        #: what this runtime says it can do (CheckinRequest.features): the plan blocks a
        #: device whose runtime cannot take what a rollout would offer it
        self.features = [FEATURE_CONFIG]
        if self.home is not None and self.home.usable():
            self.features.append(FEATURE_RUNTIME_UPDATE)
        self.runtime_offer: RuntimeOffer | None = None
        #: set when a new runtime is installed and this one must hand over (SWITCH_EXIT)
        self.switch = False
        #: without the supervisor: the runtime offer this runtime had to refuse (reported,
        #: so that the rollout fails the device at once and says why, not at its timeout)
        self.refused_runtime: RuntimeUpdateReport | None = None

    # -- public ---------------------------------------------------------------------------

    def run(self, stop: threading.Event, *, once: bool = False) -> int:
        """Loop until ``stop`` is set (or one round with ``once``); the exit code."""
        self.forwarder.start()
        self.events.start()
        if self.nats is not None:
            self.nats.start()
        code = 0
        try:
            while not stop.is_set():
                said = self._said
                delay, code = self.step()
                if self.switch:
                    from agent_runtime.supervisor import SWITCH_EXIT

                    code = SWITCH_EXIT  # the supervisor starts the new runtime
                    break
                if once:
                    break
                code = 0  # the periodic loop ends on request, not on a round's result
                busy = self._said != said  # quiet rounds (nothing offered) log nothing
                if busy:
                    self.out(f"next check-in in {delay:.1f}s")
                if delay >= IDLE_TRIM_AFTER:
                    release_memory(collect=busy)  # a quiet round leaves little garbage
                self._wait(stop, delay)
        finally:
            if self.nats is not None:
                self.nats.stop()
            self.forwarder.stop()
            self.events.stop()
            self.events.flush()
            self.client.close()
        return code

    def step(self) -> tuple[float, int]:
        """One round: enroll if needed, check in, converge, report; (seconds to wait, exit code).

        A runtime release offered at the check-in is installed afterwards (``switch``)."""
        result = self._step()
        offer, self.runtime_offer = self.runtime_offer, None
        if offer is not None:
            self._update_runtime(offer)
        return result

    def _update_runtime(self, offer: RuntimeOffer) -> None:
        """Install the offered runtime release beside this one (``runtime_update``)."""
        if offer.version == runtime_version():
            return
        if self.home is None:
            self.out(
                f"runtime {offer.version} offered, but this runtime does not run under the "
                "supervisor: left as it is"
            )
            self.refused_runtime = RuntimeUpdateReport(
                target=offer.version, result="failed", detail=NOT_SUPERVISED,
                at=datetime.now(UTC),
            )  # fmt: skip
            self._report_now()
            return
        self.out(f"runtime {offer.version} offered (rollout {offer.rollout}): installing")
        self.switch = self.home.install(offer, self.client, self.config.trusted_keys)
        if not self.switch:
            self._report_now()

    def _step(self) -> tuple[float, int]:
        try:
            self.ensure_token()
            self.adopt_if_new()
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
            return self._refused(e), 1
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

    def _refused(self, e: ServerAuthError) -> float:
        """Say why the server refused this device (its token or its enrollment); the delay."""
        if e.status == 401 and self.token is not None:
            why = (
                "this device's token was replaced by another enrollment"
                if e.code == "token_replaced"
                else "the server refused this device's token"
            )
            self.out(f"{why} ({e}): enrolling again")
            self.tokens.drop()
            self.token = self.client.token = None
            return self.backoff.failed()
        if e.code == "approval_pending":  # the server works: ask again each poll interval
            self.out(f"enrollment awaits an operator's approval: {e}")
            return self._next_poll()
        self.out(f"refused by the server: {e}")
        return self.backoff.failed()

    def ensure_token(self) -> str:
        """The device token, enrolling first when there is none; ServerError on failure."""
        if self.token is not None:
            return self.token
        answer = enroll(self.config, self.client, self.tokens)
        self.token = answer.token
        self._take_poll_interval(answer.poll_interval)
        self.out(f"enrolled {self.config.device} with {self.settings.url}")
        return answer.token

    def adopt_if_new(self) -> None:
        """On a device without runtime state, identify the installed agent first (by hashing
        it against the server's signed releases); its result is reported at check-in."""
        state = self.runtime.states.load()
        if state.installed is not None or state.adoption is not None:
            return
        if self.config.installed_version is not None or self.runtime.journal.load() is not None:
            return  # the operator said what is installed, or the runtime installed it
        from agent_runtime.adopt import server_releases

        try:
            releases = server_releases(self.client)
        except ServerProtocolError as e:
            if e.status != 404:
                raise
            return  # a server without the release list: adopt from the plan as before
        self.runtime.adopt(releases)

    def check_in(self) -> CheckinResponse:
        """Send this device's report; remember the server's poll interval."""
        self.client.token = self.token
        answer = self.client.checkin(self.report())
        self._take_poll_interval(answer.poll_interval)
        self.checkins += 1
        if self.home is not None:
            self.home.confirm_trial()
        if answer.runtime is not None:
            self.runtime_offer = answer.runtime
        return answer

    def report(self) -> CheckinRequest:
        """What this device says about itself now."""
        state = self.runtime.states.load()
        try:
            running: bool | None = self.service.is_running()
        except AgentRuntimeError:
            running = None
        found = facts(self.config.platform)
        return CheckinRequest(
            platform=self.config.platform,
            agent_version=state.installed,
            known_good=state.known_good,
            runtime_version=runtime_version(),
            python_version=found.python_version,
            os_version=found.os_version,
            components=found.components,
            agent_running=running,
            transaction=self.transaction,
            performance=self.sampler.sample(),
            runtime_update=self.refused_runtime if self.home is None else self.home.outcome(),
            config_digest=state.config_digest,
            features=self.features,
            adoption=None
            if state.adoption is None
            else AdoptionReport(
                status=state.adoption.status,
                version=state.adoption.version,
                detail=state.adoption.detail[:2000],
            ),
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

    def _wait(self, stop: threading.Event, delay: float) -> None:
        """Wait for the next check-in: ``delay`` seconds, less when NATS nudges this device."""
        if self.nats is None:
            stop.wait(delay)
        elif self.nats.wait(stop, delay):
            self.out("nudged over NATS: checking in now")

    def _hook_phases(self) -> None:
        """Queue a step event for every phase the executor enters and leaves."""
        self.runtime.executor.fx.on_phase = self._on_phase

    def _on_phase(self, record: JournalRecord, phase: Phase, status: str, detail: str) -> None:
        event = step_event(record, phase, status, detail, datetime.now(UTC))
        if event is not None:
            self.events.add(event)

    def _take_poll_interval(self, seconds: float) -> None:
        """Keep the server's poll interval, bounded by the config (logged when it was not)."""
        c = self.config.converge
        bounded, note = bounded_poll_interval(
            seconds, c.poll_interval_min.total_seconds(), c.poll_interval_max.total_seconds()
        )
        if note is not None and bounded != self.poll_interval:
            self.out(note)
        self.poll_interval = bounded

    def _next_poll(self) -> float:
        base = self.poll_interval
        if base is None:
            base = self.config.converge.interval.total_seconds()
        return poll_delay(base, self.config.converge.jitter.total_seconds(), self.rng)

    def _note_result(self, res: ConvergeResult) -> bool:
        """Keep the transaction report of ``res``; True when the server should hear of it at
        once (a transaction ran, or an offered plan found its target in place)."""
        desired = self.source.last
        target = desired.device.desired if desired is not None else None
        ran = res.outcome is not None
        if not ran and target is None:
            return False
        if not ran and res.result is Result.COMMITTED:
            return False
        # A no-op on a plan the server offered is news to it: the server offers a plan
        # only when the device's report differs from the target, so the runtime found
        # the target in place (a field install adopted, verified and started). It is
        # reported at once, like a transaction, so that the rollout counts it.
        ran = ran or res.result is Result.NOOP
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
