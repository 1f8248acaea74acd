"""Converge: recover an open journal, read the desired release, and install it if needed.

``Runtime`` wires the device config to real effects (service manager, health
probe, clock, fetcher, layout); tests may inject their own. Where the desired
release comes from is a ``PlanSource`` (``agent_runtime.plan_source``, whose
names are re-exported here for callers of ``Runtime.converge_once``).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent_runtime._fsutil import file_system_note, remove_temporaries, remove_tree
from agent_runtime._keystore import KeyStore
from agent_runtime._lock import exclusive
from agent_runtime._status import status_document
from agent_runtime.config import DeviceConfig
from agent_runtime.effects import Clock, FileFetcher, HealthProbe, ServiceManager
from agent_runtime.errors import (
    DowngradeError,
    DownloadError,
    ExpiredManifestError,
    JournalError,
    ManifestError,
    PlanError,
)
from agent_runtime.fetch import Fetcher
from agent_runtime.filecache import cache_files, installed_matches
from agent_runtime.journal import JournalRecord, JournalStore
from agent_runtime.layouts import Layout, make_layout
from agent_runtime.phases import Phase
from agent_runtime.plan_source import DesiredRelease, FilePlanSource, PlanSource, file_location
from agent_runtime.releases import SignedReleases
from agent_runtime.state import Adoption, DeviceState, Result, StateStore
from agent_runtime.transaction import Effects, Executor, Outcome
from agent_runtime.trust import check_release
from agent_runtime.txcontext import RECONFIGURE, TxContext, TxSpec, new_txid, previous_release
from fleetbase.version import Version
from states.config_bundle import ConfigBundle
from states.keyring import KeyRing
from states.manifest import ReleaseManifest

if TYPE_CHECKING:
    from agent_runtime.adopt import SignedRelease

__all__ = [
    "ConvergeResult",
    "DesiredRelease",
    "FilePlanSource",
    "PlanSource",
    "Runtime",
    "exit_code",
    "file_location",
]


@dataclass(frozen=True)
class ConvergeResult:
    """One converge's result as reported (and kept in the state file)."""

    result: Result
    detail: str
    outcome: Outcome | None = None


def exit_code(result: Result) -> int:
    """0 converged / no-op, 1 failed, rolled back or refused."""
    return 0 if result in (Result.COMMITTED, Result.NOOP) else 1


class Runtime:
    """The on-device runtime for one device config."""

    def __init__(
        self,
        config: DeviceConfig,
        *,
        service: ServiceManager | None = None,
        make_probe: Callable[[Path], HealthProbe] | None = None,
        clock: Clock | None = None,
        fetcher: FileFetcher | None = None,
        layout: Layout | None = None,
        out: Callable[[str], None] = print,
    ) -> None:
        from agent_runtime.clock import SystemClock
        from agent_runtime.services import make_service_manager

        self.config = config
        self.keystore = KeyStore(config)
        self.layout = layout or make_layout(config)
        self.service = service or make_service_manager(
            config.service, default_state_dir=config.state_dir
        )
        self.make_probe = make_probe or self._health_probe
        self.clock = clock or SystemClock()
        self.fetcher: FileFetcher = fetcher or Fetcher(config.download)
        self.journal = JournalStore(config.state_dir)
        self.states = StateStore(config.state_dir)
        self.releases = SignedReleases(config, self.keystore, self.states, self.fetcher, self.clock)
        self.out = out
        self._fs_checked = False
        self.executor = Executor(
            config,
            Effects(
                layout=self.layout,
                service=self.service,
                make_probe=self.make_probe,
                clock=self.clock,
                fetcher=self.fetcher,
                journal=self.journal,
                states=self.states,
                out=out,
            ),
        )

    @property
    def keys(self) -> KeyRing:
        """The release keys trusted now (pinned, or listed by the accepted keys document)."""
        return self.releases.keys

    def _health_probe(self, agent_dir: Path) -> HealthProbe:
        from agent_runtime.health import Health  # imported on first use

        return Health(self.service, agent_dir, poll_interval=0.1)

    # -- entry points -------------------------------------------------------------------

    def converge_once(self, source: PlanSource) -> ConvergeResult:
        """Recover, then converge to the plan's desired release; never raises AgentRuntimeError
        except PlanError (the plan is unusable) and a lock held by another runtime."""
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        if not self._fs_checked:
            self._fs_checked = True
            note = file_system_note(self.config.staging_dir, self.config.agent_root)
            if note is not None:
                self.out(note)
        with exclusive(self.config.state_dir / "lock"):
            try:
                recovered = self._recover()
                if recovered is not None and not recovered.outcome_closed:
                    return self._finish(recovered.result)
                desired = source.fetch()
                return self._finish(self._converge(desired))
            finally:
                self.fetcher.close()  # no connection is kept open while idle

    def adopt(self, releases: Iterable[SignedRelease]) -> Adoption:
        """Identify a field install by hashing it against ``releases`` (agent_runtime.adopt)
        and, with the process manager, take the agent already running into its pid file."""
        from agent_runtime.adopt import adopt
        from agent_runtime.services.process import ProcessManager

        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        with exclusive(self.config.state_dir / "lock"):
            adoption = adopt(self, releases, self.clock.now())
            self.out(f"adopt: {adoption.status}: {adoption.detail}")
            version = adoption.version
            if adoption.status == "known" and version is not None:
                kept = self.releases.kept(version)
                files = kept.platforms.get(self.config.platform) if kept is not None else None
                if isinstance(self.service, ProcessManager):
                    pid = self.service.adopt_running(self.executor.run_spec(version, files))
                    how = f"running, pid {pid}" if pid is not None else "not running"
                    self.out(f"adopt: the agent is {how}")
            return adoption

    def rollback(self) -> ConvergeResult:
        """Restore the previous known-good release from the local copy (always allowed)."""
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        with exclusive(self.config.state_dir / "lock"):
            recovered = self._recover()
            if recovered is not None and not recovered.outcome_closed:
                return self._finish(recovered.result)
            state = self.states.load()
            target = state.previous
            if target is None:
                return self._finish(
                    ConvergeResult(Result.FAILED, "no previous known-good release to restore")
                )
            bad = state.installed
            res = self._restore(state, target, unconditional=True)
            if res is None:
                return self._finish(
                    ConvergeResult(
                        Result.FAILED, f"no complete local copy of {target} is kept: cannot restore"
                    )
                )
            if res.result is Result.COMMITTED:
                state = self.states.load()
                if bad is not None:
                    state.attempts[str(bad)] = self.config.max_attempts
                    state.desired = bad
                self.states.save(state)
                res = ConvergeResult(
                    Result.ROLLED_BACK, f"restored {target} on request; {bad} will not be retried "
                    "until the desired release changes", res.outcome,
                )  # fmt: skip
            return self._finish(res)

    def status(self) -> dict[str, Any]:
        """Installed / known-good versions, the journal and the last result, as plain data."""
        return status_document(self.config, self.states, self.journal, self.service)

    # -- recovery -----------------------------------------------------------------------

    def _recover(self) -> _Recovered | None:
        remove_temporaries(self.config.state_dir)  # atomic writes a killed run left
        record = self.journal.load()
        if record is None or not record.is_open:
            self._sweep_staging(None)
            return None
        self.out(f"open journal: transaction {record.txid} to {record.target} in {record.phase}")
        staging = self.config.staging_dir / record.txid
        try:
            ctx = TxContext.load(staging, self.keys, self.config, self.states)
        except (JournalError, ManifestError) as e:
            outcome = self._close_unrecoverable(record, str(e))
        else:
            outcome = self.executor.recover(record, ctx)
        if outcome.gave_up:
            state = self.states.load()
            state.attempts[str(record.target)] = self.config.max_attempts
            self.states.save(state)
        self._apply(outcome, record.target)
        self._sweep_staging(record.txid if not outcome.closed else None)
        return _Recovered(ConvergeResult(outcome.result, outcome.detail, outcome), outcome.closed)

    def _close_unrecoverable(self, record: JournalRecord, why: str) -> Outcome:
        """The transaction files are gone: close the journal as far as can be known."""
        state = self.states.load()
        if record.phase is Phase.COMMIT and state.installed == record.target:
            phase, result = Phase.DONE, Result.COMMITTED
        elif record.phase in (Phase.DOWNLOAD, Phase.VERIFY, Phase.BACKUP, Phase.CLEANUP):
            phase, result = Phase.FAILED, Result.FAILED
        else:
            phase, result = Phase.FAILED, Result.FAILED
            why = f"cannot recover transaction {record.txid} in {record.phase}: {why}"
        record.phase = phase
        record.error = record.error or why
        self.journal.save(record, self.clock.now())
        return Outcome(phase, result, why)

    def _sweep_staging(self, keep: str | None) -> None:
        staging = self.config.staging_dir
        if staging.is_dir():
            for d in staging.iterdir():
                if d.name != keep:
                    remove_tree(d)

    # -- converge -----------------------------------------------------------------------

    def _converge(self, desired: DesiredRelease) -> ConvergeResult:
        plan = desired.device
        state = self.states.load()
        target = plan.desired
        if target is None:
            return ConvergeResult(
                Result.NOOP, f"the plan wants no release ({plan.action}): nothing"
            )
        if state.desired != target:
            state.desired = target
            state.attempts = {}
        unknown = state.adoption is not None and state.adoption.status == "unknown"
        if state.installed is None and not unknown:  # unknown files were backed up: replace
            adopted = self._adopt(state, plan.current)
            if adopted is not None:
                self.states.save(state)
                return adopted
        self.states.save(state)
        if target != state.installed or self.keystore.wants_refresh(self.clock.now()):
            self.releases.refresh_keys(desired, self.out)
        config = desired.config
        if (
            config is not None
            and state.installed == target
            and config.digest != state.config_digest
        ):
            return self._reconfigure(state, desired, config)
        if state.installed == target:
            res = self._check_installed(state, desired)
            if res is not None:
                return res
        tried = state.attempts.get(str(target), 0)
        if tried >= self.config.max_attempts:
            return ConvergeResult(
                Result.FAILED,
                f"{target} failed {tried} times (max_attempts {self.config.max_attempts}): "
                "not retried until the desired release changes",
            )
        if target != state.installed:
            restored = self._restore(state, target)
            if restored is not None:
                return restored
        return self._update(state, desired)

    def _adopt(self, state: DeviceState, plan_current: Version | None) -> ConvergeResult | None:
        """Take over a field install: learn its version; None when there is nothing to adopt."""
        if not self.layout.has_files():
            return None
        from agent_runtime.layouts.versioned import VersionedLayout

        if isinstance(self.layout, VersionedLayout):
            pointed = self.layout.current_version()
            if pointed is not None:
                state.installed, state.known_good, state.adopted_from = pointed, pointed, "layout"
                return None
        if self.config.installed_version is not None:
            state.installed = self.config.installed_version
            state.adopted_from = "config"
        elif plan_current is not None:
            state.installed = plan_current
            state.adopted_from = "plan"
        else:
            return ConvergeResult(
                Result.FAILED,
                f"{self.config.agent_root} holds an agent of unknown version and the runtime has "
                "no state: set installed_version in the device config to adopt it",
            )
        state.known_good = state.installed
        self.out(f"adopted the install in {self.config.agent_root} as {state.installed} "
                 f"(from {state.adopted_from})")  # fmt: skip
        return None

    def _check_installed(
        self, state: DeviceState, desired: DesiredRelease
    ) -> ConvergeResult | None:
        """No-op when the installed files are the desired release's; None when they drifted."""
        assert state.installed is not None
        version = state.installed
        manifest = self.releases.kept(version)
        from_plan = False
        if manifest is None:
            try:
                manifest = self.releases.plan_manifest(desired)[0]
            except (ManifestError, DownloadError, PlanError) as e:
                return ConvergeResult(Result.FAILED, f"cannot verify the installed {version}: {e}")
            from_plan = True
        files = manifest.platforms.get(self.config.platform)
        if files is None:
            return ConvergeResult(Result.FAILED, f"{version} has no files for this platform")
        ok, hashed = installed_matches(self.layout, version, files.files, state)
        if not ok:
            self.out(f"installed files differ from release {version}: reinstalling it")
            return None
        if from_plan or hashed:
            if from_plan:
                m, s = self.releases.plan_bytes(desired)
                self.states.keep_manifest(version, m, s)
            state.file_cache = cache_files(self.layout, version, files.files)
            self.states.save(state)
        started = self.service.ensure_running(self.executor.run_spec(version, files))
        how = "agent was not running: started it" if started else "agent running"
        return ConvergeResult(Result.NOOP, f"{version} installed and verified; {how}")

    def _restore(
        self, state: DeviceState, target: Version, *, unconditional: bool = False
    ) -> ConvergeResult | None:
        """Install ``target`` from the device's own copy, if a complete one is kept.

        A plan asking for it (``unconditional`` False) gets the download path's checks
        on the kept signed manifest: not expired, and a serial below the highest seen
        only when the installed release authorises it (``rollback_to``); a refusal is a
        REFUSED result and nothing moves. Only the operator's local ``rollback``
        restores known-good unconditionally. None: no usable local copy.
        """
        source = self.layout.restore_source(target)
        kept = self.states.kept_manifest(target)
        if source is None or kept is None:
            return None
        where = str(self.states.manifest_paths(target)[0])
        try:
            manifest, files = check_release(
                kept[0], kept[1], desired=target, ctx=self.releases.trust(state), where=where,
                local_restore=unconditional,
            )  # fmt: skip
        except (DowngradeError, ExpiredManifestError) as e:
            if isinstance(e, ExpiredManifestError):
                return None  # the server may offer the release re-signed: the download path
            self.out(f"refused to restore {target}: {e}")
            return ConvergeResult(Result.REFUSED, str(e))
        except ManifestError:
            return None
        if not all((source / e.path).is_file() for e in files.files):
            return None
        self.out(f"restoring {target} from the local copy in {source}")
        sources = {e.path: str(source / e.path) for e in files.files}
        return self._run(state, "restore", target, (manifest, kept[0], kept[1]), sources)

    def _update(self, state: DeviceState, desired: DesiredRelease) -> ConvergeResult:
        target = desired.device.desired
        assert target is not None
        ref = desired.release
        if ref is None:
            raise PlanError(f"the plan has no releases[{target!s}] entry saying where {target} is")
        try:
            m, s = self.releases.plan_bytes(desired)
        except DownloadError as e:
            return ConvergeResult(Result.FAILED, f"cannot fetch the manifest of {target}: {e}")
        except ManifestError as e:
            return ConvergeResult(Result.REFUSED, str(e))
        try:
            manifest, files = check_release(
                m, s, desired=target, ctx=self.releases.trust(state), where=ref.manifest
            )
        except ManifestError as e:
            return ConvergeResult(Result.REFUSED, str(e))
        origin = self.keys.origin
        self.out(f"release {target} (serial {manifest.serial}) verified with {origin}")
        sources = {e.path: file_location(ref, e, desired.base) for e in files.files}
        return self._run(state, "update", target, (manifest, m, s), sources, config=desired.config)

    def _reconfigure(
        self, state: DeviceState, desired: DesiredRelease, config: ConfigBundle
    ) -> ConvergeResult:
        """Install only new config files and flags for the installed release (``reconfigure``)."""
        target = state.installed
        assert target is not None
        key = f"{target}+{config.digest}"
        tried = state.attempts.get(key, 0)
        if tried >= self.config.max_attempts:
            return ConvergeResult(
                Result.FAILED,
                f"config {config.digest} of {target} failed {tried} times (max_attempts "
                f"{self.config.max_attempts}): not retried until the desired config changes",
            )
        kept = self.states.kept_manifest(target)
        manifest = self.releases.kept(target)
        if kept is None or manifest is None:
            try:
                manifest, m, s = self.releases.plan_manifest(desired)
            except (ManifestError, DownloadError, PlanError) as e:
                return ConvergeResult(Result.FAILED, f"cannot verify the installed {target}: {e}")
        else:
            m, s = kept
        files = manifest.platforms.get(self.config.platform)
        if files is None:
            return ConvergeResult(Result.FAILED, f"{target} has no files for this platform")
        state.attempts[key] = tried + 1
        self.states.save(state)
        txid = new_txid(self.clock.now())
        ctx = TxContext(
            spec=TxSpec(
                txid=txid,
                kind=RECONFIGURE,
                target=target,
                previous=target,
                sources={},
                config_managed=list(state.config_files),
            ),
            staging=self.config.staging_dir / txid,
            manifest=manifest,
            files=files,
            manifest_bytes=m,
            signature=s,
            previous_files=files,
            previous_health=manifest.health_check,
            config=config,
        )
        self.out(
            f"transaction {txid}: config {state.config_digest or 'none'} -> {config.digest} "
            f"on {target} (attempt {tried + 1} of {self.config.max_attempts})"
        )
        outcome = self.executor.start(ctx)
        self._apply(outcome, target)
        return ConvergeResult(outcome.result, outcome.detail, outcome)

    def _run(
        self,
        state: DeviceState,
        kind: str,
        target: Version,
        signed: tuple[ReleaseManifest, bytes, bytes],
        sources: dict[str, str],
        *,
        config: ConfigBundle | None = None,
    ) -> ConvergeResult:
        manifest, manifest_bytes, signature = signed
        state.attempts[str(target)] = state.attempts.get(str(target), 0) + 1
        self.states.save(state)
        txid = new_txid(self.clock.now())
        files = manifest.platforms[self.config.platform]
        prev_files, prev_health = previous_release(
            state.installed, self.keys, self.config, self.states
        )
        ctx = TxContext(
            spec=TxSpec(
                txid=txid,
                kind=kind,
                target=target,
                previous=state.installed,
                sources=sources,
                config_managed=list(state.config_files),
            ),
            staging=self.config.staging_dir / txid,
            manifest=manifest,
            files=files,
            manifest_bytes=manifest_bytes,
            signature=signature,
            previous_files=prev_files,
            previous_health=prev_health,
            config=config,
        )
        self.out(
            f"transaction {txid}: {state.installed or 'nothing'} -> {target} "
            f"(attempt {state.attempts[str(target)]} of {self.config.max_attempts})"
        )
        outcome = self.executor.start(ctx)
        self._apply(outcome, target)
        return ConvergeResult(outcome.result, outcome.detail, outcome)

    def _apply(self, outcome: Outcome, target: Version) -> None:
        """Record a transaction's end in the state file (commit already recorded itself)."""
        state = self.states.load()
        state.last_result = outcome.result
        state.last_detail = outcome.detail
        self.states.save(state)

    def _finish(self, res: ConvergeResult) -> ConvergeResult:
        state = self.states.load()
        state.last_result = res.result
        state.last_detail = res.detail
        state.last_run = self.clock.now()
        self.states.save(state)
        return res

    def jitter(self) -> float:
        """Seconds until the next periodic converge: interval plus a random share of jitter."""
        c = self.config.converge
        return c.interval.total_seconds() + random.uniform(0, c.jitter.total_seconds())


@dataclass(frozen=True)
class _Recovered:
    result: ConvergeResult
    outcome_closed: bool
