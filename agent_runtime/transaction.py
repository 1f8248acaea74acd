"""The crash-safe transaction executor: journal first, then the phase's effect, then the table.

Phases, events and the ``TRANSITIONS`` table live in ``agent_runtime.phases``
(pure, re-exported here). The executor saves the journal *before* entering
each phase, performs the phase's effect through injected interfaces (fetcher,
layout, service manager, health probe, clock) and feeds the outcome event to
the table. What the transaction installs is kept in ``staging/<txid>/``
(``agent_runtime.txcontext``) before the first journal save, so a new process
can pick up any open journal.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent_runtime import configfiles, faults
from agent_runtime._fsutil import remove_tree, sha256_file
from agent_runtime.config import DeviceConfig
from agent_runtime.effects import Clock, FileFetcher, HealthProbe, RunSpec, ServiceManager
from agent_runtime.errors import ArtifactMismatchError
from agent_runtime.filecache import cache_files
from agent_runtime.journal import JournalRecord, JournalStore
from agent_runtime.layouts.base import Layout
from agent_runtime.phases import (
    RECOVERY_START,
    ROLLBACK_PHASES,
    TERMINAL_PHASES,
    TRANSITIONS,
    Event,
    Phase,
    next_phase,
)
from agent_runtime.state import Result, StateStore
from agent_runtime.txcontext import TxContext
from fleetbase.version import Version
from states.manifest import HealthCheck, PlatformRelease

__all__ = [
    "TRANSITIONS",
    "Effects",
    "Event",
    "Executor",
    "Outcome",
    "Phase",
]

#: In-process retries of a phase whose failure maps back to itself (rollback, commit).
MAX_RETRIES = 2
#: Recoveries of one journal before the runtime declares a crash loop and gives up.
MAX_RECOVERIES = 5
#: Journal saves of one transaction before the runtime declares a state loop.
MAX_SAVES = 500


@dataclass
class Effects:
    """The executor's window on the world."""

    layout: Layout
    service: ServiceManager
    make_probe: Callable[[Path], HealthProbe]
    clock: Clock
    fetcher: FileFetcher
    journal: JournalStore
    states: StateStore
    out: Callable[[str], None] = print
    #: told of each phase: (record, phase, "started" | "ok" | "failed", detail); must not raise
    on_phase: Callable[[JournalRecord, Phase, str, str], None] | None = None


@dataclass
class Outcome:
    """How a transaction ended (or stopped, leaving its journal open)."""

    phase: Phase
    result: Result
    detail: str
    timings: dict[str, float] = field(default_factory=dict)
    #: recovery gave up (crash loop): the target must not be tried again
    gave_up: bool = False

    @property
    def closed(self) -> bool:
        """True when the journal reached a terminal phase."""
        return self.phase in TERMINAL_PHASES


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


class Executor:
    """Runs one transaction through the transition table, journaling before each phase."""

    def __init__(self, config: DeviceConfig, effects: Effects) -> None:
        self.config = config
        self.fx = effects
        self._actions: dict[Phase, Callable[[JournalRecord, TxContext], str]] = {
            Phase.DOWNLOAD: self._download,
            Phase.VERIFY: self._verify,
            Phase.BACKUP: self._backup,
            Phase.SWAP: self._swap,
            Phase.RESTART: self._restart,
            Phase.CONFIRM: self._confirm,
            Phase.COMMIT: self._commit,
            Phase.CLEANUP: self._cleanup,
            Phase.ROLLBACK_SWAP: self._rollback_swap,
            Phase.ROLLBACK_RESTART: self._rollback_restart,
            Phase.ROLLBACK_CONFIRM: self._rollback_confirm,
        }

    # -- entry points -------------------------------------------------------------------

    def start(self, ctx: TxContext) -> Outcome:
        """Run a new transaction from IDLE; ``ctx`` is written to staging first."""
        ctx.write()
        now = self.fx.clock.now()
        record = JournalRecord(
            txid=ctx.spec.txid,
            kind=ctx.spec.kind,
            phase=Phase.IDLE,
            target=ctx.spec.target,
            previous=ctx.spec.previous,
            started_at=now,
            updated_at=now,
        )
        return self._drive(record, ctx, next_phase(Phase.IDLE, Event.START))

    def recover(self, record: JournalRecord, ctx: TxContext) -> Outcome:
        """Resume an open journal left by a process that died (or gave up) in ``record.phase``."""
        record.recoveries += 1
        record.retries = 0
        if record.recoveries > MAX_RECOVERIES or record.saves > MAX_SAVES:
            detail = (
                f"state loop detected: transaction {record.txid} to {record.target} was "
                f"recovered {record.recoveries - 1} times ({record.saves} journal saves); "
                "giving up — check the device by hand"
            )
            record.error = detail
            record.phase = Phase.FAILED
            self.fx.journal.save(record, self.fx.clock.now())
            self.fx.out(detail)
            return Outcome(Phase.FAILED, Result.FAILED, detail, gave_up=True)
        start = RECOVERY_START[record.phase]
        self._clear_temporaries(ctx)
        self.fx.out(
            f"recovering transaction {record.txid}: open in {record.phase}, resuming at {start}"
        )
        return self._drive(record, ctx, start)

    # -- the loop -----------------------------------------------------------------------

    def _drive(self, record: JournalRecord, ctx: TxContext, phase: Phase) -> Outcome:
        timings: dict[str, float] = {}
        clock = self.fx.clock
        while phase not in TERMINAL_PHASES:
            record.phase = phase
            self.fx.journal.save(record, clock.now())
            self._tell(record, phase, "started", "")
            t0 = time.perf_counter()
            try:
                faults.hit(f"before:{phase}")
                detail = self._actions[phase](record, ctx)
                faults.hit(f"after:{phase}")
                event = Event.OK
            except Exception as e:  # every failing effect becomes a FAIL event
                event = Event.FAIL
                detail = str(e) if isinstance(e, _UnhealthyError) else f"{type(e).__name__}: {e}"
                if phase not in (Phase.CLEANUP,) and not str(phase).startswith("ROLLBACK"):
                    record.error = f"{phase}: {detail}"
            elapsed = time.perf_counter() - t0
            timings[str(phase)] = timings.get(str(phase), 0.0) + elapsed
            self.fx.out(f"  {phase!s:<17} {event!s:<4} {elapsed:7.3f}s  {detail}")
            self._tell(record, phase, "ok" if event is Event.OK else "failed", detail)
            nxt = next_phase(phase, event)
            if event is Event.FAIL and (nxt is phase or phase in ROLLBACK_PHASES):
                record.retries += 1
                if record.retries > MAX_RETRIES:
                    msg = (
                        f"{phase} keeps failing ({detail}); the journal stays open and "
                        "the next start retries"
                    )
                    return Outcome(phase, Result.FAILED, msg, timings)
                clock.sleep(0.2 * record.retries)
            phase = nxt
        record.phase = phase
        self.fx.journal.save(record, clock.now())
        self._clear_temporaries(ctx)
        remove_tree(ctx.staging)  # the journal is closed: nothing needs the transaction files
        result = {
            Phase.DONE: Result.COMMITTED,
            Phase.ROLLED_BACK: Result.ROLLED_BACK,
            Phase.FAILED: Result.FAILED,
        }[phase]
        detail = record.error or ""
        if phase is Phase.DONE:
            detail = f"{ctx.spec.target} committed"
        return Outcome(phase, result, detail, timings)

    def _clear_temporaries(self, ctx: TxContext) -> None:
        """Remove what killed runs left beside the agent's files; a failure is only told."""
        try:
            self.fx.layout.clear_temporaries(ctx.swap_plan)
        except Exception as e:  # leftovers are retried at the next recovery or close
            self.fx.out(f"  (temporary files not removed: {type(e).__name__}: {e})")

    def _tell(self, record: JournalRecord, phase: Phase, status: str, detail: str) -> None:
        """Report a phase to the observer, if any; an observer's failure changes nothing."""
        if self.fx.on_phase is not None:
            try:
                self.fx.on_phase(record, phase, status, detail)
            except Exception as e:  # observers (event reporting) are best-effort
                self.fx.out(f"  (phase observer failed: {type(e).__name__}: {e})")

    # -- phase effects (each returns a detail line, raises on failure) -------------------

    def _download(self, record: JournalRecord, ctx: TxContext) -> str:
        staged = "" if ctx.config is None else configfiles.stage(ctx.config, ctx.staging)
        if ctx.reconfigure:
            return f"{staged} config files staged"
        note = f"; {staged} config files staged" if ctx.config is not None else ""
        return self._download_files(ctx) + note

    def _download_files(self, ctx: TxContext) -> str:
        before = self.fx.fetcher.bytes_transferred
        t0 = time.perf_counter()
        for entry in ctx.files.files:
            self.fx.fetcher.fetch(
                ctx.spec.sources[entry.path],
                ctx.swap_plan.staged(entry),
                size=entry.size,
                sha256=entry.sha256,
            )
        moved = self.fx.fetcher.bytes_transferred - before
        secs = max(time.perf_counter() - t0, 1e-9)
        return (
            f"{len(ctx.files.files)} files, {_mb(ctx.files.total_size)} "
            f"({_mb(moved)} transferred, {moved / secs / 1e6:.0f} MB/s)"
        )

    def _verify(self, record: JournalRecord, ctx: TxContext) -> str:
        if ctx.config is not None:
            configfiles.verify(ctx.config, ctx.staging)
        if ctx.reconfigure:
            return f"config {ctx.config.digest if ctx.config else ''} verified"
        for entry in ctx.files.files:
            path = ctx.swap_plan.staged(entry)
            try:
                size = path.stat().st_size
            except FileNotFoundError as e:
                raise ArtifactMismatchError(f"{entry.path}: staged file missing") from e
            if size != entry.size:
                raise ArtifactMismatchError(
                    f"{entry.path}: staged {size} bytes, manifest declares {entry.size}"
                )
            digest = sha256_file(path)
            if digest != entry.sha256:
                raise ArtifactMismatchError(
                    f"{entry.path}: sha256 {digest} does not match the manifest's {entry.sha256}"
                )
        return f"{len(ctx.files.files)} files match the signed manifest"

    def _backup(self, record: JournalRecord, ctx: TxContext) -> str:
        note = ""
        if ctx.config is not None:
            kept = configfiles.backup(
                ctx.config, self.config.agent_config_dir, ctx.staging, ctx.spec.config_managed
            )
            note = f"{kept} config files kept restorable"
        if ctx.reconfigure:
            return note
        self.fx.layout.backup(ctx.swap_plan)
        done = f"{ctx.spec.previous or 'nothing'} kept restorable"
        return f"{done}; {note}" if note else done

    def _swap(self, record: JournalRecord, ctx: TxContext) -> str:
        def touch(path: str) -> None:
            record.swap_started.append(path)
            self.fx.journal.save(record, self.fx.clock.now())

        note = ""
        if not ctx.reconfigure:
            self.fx.layout.swap(ctx.swap_plan, touch)
            note = f"{ctx.spec.previous or 'nothing'} -> {ctx.spec.target}"
        if ctx.config is not None:
            count = configfiles.swap(
                ctx.config, self.config.agent_config_dir, ctx.staging, ctx.spec.config_managed
            )
            config_note = f"{count} config files in place"
            note = f"{note}; {config_note}" if note else config_note
        return note

    def run_spec(self, version: Version, files: PlatformRelease | None) -> RunSpec:
        """How to run ``version`` once it is active."""
        argv = (files.command if files is not None else None) or self.config.command or []
        return RunSpec(
            cwd=self.fx.layout.active_dir(version),
            argv=list(argv),
            version=version,
            env={"AGENT_CONFIG_DIR": str(self.config.agent_config_dir), **self.config.env},
        )

    def health_check(self, check: HealthCheck | None) -> HealthCheck:
        """The release's health check (or the device default), with the config's timeout cap."""
        chosen = check or self.config.health_check
        cap = self.config.health_timeout
        if cap is not None and chosen.timeout > cap:
            chosen = chosen.model_copy(update={"timeout": cap})
        return chosen

    def _restart(self, record: JournalRecord, ctx: TxContext) -> str:
        ctx.spec.since = self.fx.clock.now()
        ctx.save_spec()
        self.fx.service.restart(self.run_spec(ctx.spec.target, ctx.files))
        return f"{self.fx.service.name}: {ctx.spec.target} started"

    def _confirm(self, record: JournalRecord, ctx: TxContext) -> str:
        since = ctx.spec.since or record.started_at
        check = self.health_check(ctx.manifest.health_check)
        probe = self.fx.make_probe(self.fx.layout.active_dir(ctx.spec.target))
        result = probe.wait_healthy(check, ctx.spec.target, since, self.fx.clock)
        if not result.healthy:
            raise _UnhealthyError(result.detail)
        return result.detail

    def _commit(self, record: JournalRecord, ctx: TxContext) -> str:
        states = self.fx.states
        state = states.load()
        target = ctx.spec.target
        if ctx.config is not None:
            state.config_digest = ctx.config.digest
            state.config_files = sorted(f.path for f in ctx.config.files)
        if ctx.reconfigure:
            state.last_result = Result.COMMITTED
            state.last_detail = f"{target} reconfigured ({ctx.config.digest if ctx.config else ''})"
            states.save(state)
            return f"config {state.config_digest} recorded"
        states.keep_manifest(target, ctx.manifest_bytes, ctx.signature)
        if state.known_good is not None and state.known_good != target:
            state.previous = state.known_good
        state.installed = target
        state.known_good = target
        state.adopted_from = None
        if ctx.spec.kind == "update":
            state.highest_serial = max(state.highest_serial, ctx.manifest.serial)
        state.file_cache = cache_files(self.fx.layout, target, ctx.files.files)
        state.last_result = Result.COMMITTED
        state.last_detail = f"{target} committed"
        states.save(state)
        keep = {v for v in (target, state.previous) if v is not None}
        cutoff = self.fx.clock.now() - self.config.backup_retention
        self.fx.layout.finish(ctx.swap_plan, keep, cutoff)
        return f"known-good is now {target}"

    def _cleanup(self, record: JournalRecord, ctx: TxContext) -> str:
        remove_tree(ctx.staging / "files")
        return "staging removed; the running agent was not touched"

    def _rollback_swap(self, record: JournalRecord, ctx: TxContext) -> str:
        note = ""
        if ctx.config is not None:
            restored = configfiles.restore(self.config.agent_config_dir, ctx.staging)
            note = f"{restored} config files restored"
        if ctx.reconfigure:
            return note
        self.fx.layout.rollback(ctx.swap_plan, list(record.swap_started))
        done = f"files of {ctx.spec.previous or 'nothing'} restored"
        return f"{done}; {note}" if note else done

    def _rollback_restart(self, record: JournalRecord, ctx: TxContext) -> str:
        previous = ctx.spec.previous
        if previous is None:
            self.fx.service.stop()
            return "nothing was installed before: agent stopped"
        ctx.spec.rollback_since = self.fx.clock.now()
        ctx.save_spec()
        self.fx.service.restart(self.run_spec(previous, ctx.previous_files))
        return f"{self.fx.service.name}: {previous} started"

    def _rollback_confirm(self, record: JournalRecord, ctx: TxContext) -> str:
        previous = ctx.spec.previous
        if previous is None:
            return "nothing to confirm"
        since = ctx.spec.rollback_since or record.started_at
        check = self.health_check(ctx.previous_health)
        probe = self.fx.make_probe(self.fx.layout.active_dir(previous))
        result = probe.wait_healthy(check, previous, since, self.fx.clock)
        if not result.healthy:
            raise _UnhealthyError(f"known-good {previous}: {result.detail}")
        if not ctx.reconfigure:
            self.fx.layout.discard(ctx.swap_plan)
        return result.detail


class _UnhealthyError(Exception):
    """The health check did not pass."""
