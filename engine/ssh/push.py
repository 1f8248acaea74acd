"""Agentless devices: the engine converges them over SSH through the normal rollout controller.

One *round* for a device: connect, make sure a runtime is on the host (see
``_runtime``), write the device config the engine keeps for it, read
``agent-runtime status --json``, and check in as the device with what it says.
When `engine serve` answers with a plan, upload the release's signed manifest
and files and a one-device plan, run ``agent-runtime converge --once --plan
FILE --json``, post the step events it printed (as a pull-mode runtime posts
them) and check in again with the result. The controller (waves,
gates, halts, rollback plans) sees these devices exactly as it sees
pull-mode runtimes; docs/adr/0007-ssh-transport.md explains why.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from engine.ssh._device_client import DeviceApiClient, DeviceApiError
from engine.ssh._runtime import RuntimeInstaller
from engine.ssh.errors import RemoteCommandError, SshError
from engine.ssh.session import SshSession
from engine.ssh.targets import SshTarget
from fleetbase.version import Version
from states.manifest import ReleaseManifest
from states.plan import InventoryRef, Plan, ReleaseRef, StateRef
from states.protocol import CheckinRequest, CheckinResponse, StepEvent, TransactionReport

__all__ = ["AgentlessRelay", "RoundResult"]

#: Seconds one converge on a host may take (download, swap, restart, health check).
CONVERGE_TIMEOUT = 600.0
#: Seconds for a quick remote command (status, mkdir).
COMMAND_TIMEOUT = 60.0
_EVENTS = TypeAdapter(list[StepEvent])


@dataclass(frozen=True)
class RoundResult:
    """What one round did for one device."""

    device: str
    ok: bool
    summary: str
    kind: str = "ok"  # an SshError kind when not ok
    converged: bool = False


class AgentlessRelay:
    """Runs rounds for agentless devices against one `engine serve`."""

    def __init__(
        self,
        targets: dict[str, SshTarget],
        api: DeviceApiClient,
        *,
        trusted_keys: list[str],
        cache_dir: Path,
        installer: RuntimeInstaller,
        accept_new: bool = False,
        connect_timeout: float = 10.0,
        converge_timeout: float = CONVERGE_TIMEOUT,
    ) -> None:
        """Relay for ``targets``; release files are cached under ``cache_dir``."""
        self.targets = targets
        self.api = api
        self.trusted_keys = trusted_keys
        self.cache_dir = cache_dir
        self.installer = installer
        self.accept_new = accept_new
        self.connect_timeout = connect_timeout
        self.converge_timeout = converge_timeout

    def round_all(
        self,
        devices: Iterable[str],
        *,
        forks: int,
        on_result: Callable[[RoundResult], None] = lambda _r: None,
    ) -> list[RoundResult]:
        """One round for each of ``devices`` (at most ``forks`` at once)."""
        ids = [d for d in devices if d in self.targets]
        results: list[RoundResult] = []
        with ThreadPoolExecutor(max(1, forks), thread_name_prefix="ssh") as pool:
            for res in pool.map(self.round, ids):
                on_result(res)
                results.append(res)
        return results

    def round(self, device: str) -> RoundResult:
        """One round for ``device``; failures become a RoundResult, never an exception."""
        target = self.targets[device]
        try:
            with SshSession(
                target.endpoint, accept_new=self.accept_new, timeout=self.connect_timeout
            ) as session:
                return self._round(session, target)
        except SshError as e:
            return RoundResult(device, False, str(e), e.kind)
        except OSError as e:  # sftp answers with OSError (permission denied, disk full, ...)
            why = f"{target.endpoint}: a file transfer failed: {e}"
            return RoundResult(device, False, why, "failed")

    # -- one round ------------------------------------------------------------------------

    def _round(self, session: SshSession, target: SshTarget) -> RoundResult:
        runtime = self.installer.ensure(session, target)
        home = _Remote(session, target)
        session.makedirs(home.device_dir)
        session.write(home.config, self._config(target, home).encode())
        listing = session.check(
            [runtime, "status", "--json", "--config", home.config], timeout=COMMAND_TIMEOUT
        )
        status = _json(listing, session, "agent-runtime status")
        answer = self.api.checkin(target.device, _report(target, status))
        if answer.plan is None or answer.release is None:
            return RoundResult(target.device, True, f"{_running(status)}; nothing to do")
        plan_path = self._upload_plan(session, target, home, answer)
        res = session.run(
            [runtime, "converge", "--once", "--json", "--plan", plan_path, "--config", home.config],
            timeout=self.converge_timeout,
        )
        try:
            doc = json.loads(res.stdout)
            result, detail, after = str(doc["result"]), str(doc["detail"]), dict(doc["status"])
        except (ValueError, KeyError, TypeError) as e:
            last = (res.stderr.strip() or "no output").splitlines()[-1]
            raise RemoteCommandError(
                f"{session.endpoint}: agent-runtime converge exited with {res.exit_status} "
                f"without a result: {last}"
            ) from e
        lost = self._send_events(target, doc.get("events"))
        self.api.checkin(target.device, _report(target, after))
        ok = result in ("committed", "noop")
        action = f"{answer.plan.action.value} {answer.plan.desired}"
        return RoundResult(target.device, ok, f"{action}: {result} — {detail}{lost}",
                           "ok" if ok else "failed", converged=True)  # fmt: skip

    def _send_events(self, target: SshTarget, raw: object) -> str:
        """Post the converge's step events for the device (best effort, as pull mode does);
        a note for the round's summary when they could not be sent."""
        try:
            events = _EVENTS.validate_python(raw or [])
            self.api.post_events(target.device, target.platform, events)
        except ValidationError as e:
            return f" (step events not understood: {e.error_count()} errors)"
        except DeviceApiError as e:
            return f" (step events not recorded: {e})"
        return ""

    def _config(self, target: SshTarget, home: _Remote) -> str:
        extra = dict(target.runtime_config)
        service = {"manager": target.service, **dict(extra.pop("service", None) or {})}
        config: dict[str, Any] = {
            "device": target.device,
            "platform": target.platform.value,
            "agent_root": target.agent_root,
            "layout": "in_place",
            "state_dir": home.state_dir,
            "service": service,
            "trusted_keys": self.trusted_keys,
        }
        config.update(extra)
        return "# written by `engine apply --transport ssh`; changes are overwritten\n" + (
            yaml.safe_dump(config, sort_keys=False)
        )

    def _upload_plan(
        self, session: SshSession, target: SshTarget, home: _Remote, answer: CheckinResponse
    ) -> str:
        ref, plan = answer.release, answer.plan
        assert ref is not None and plan is not None
        version = str(ref.version)
        local = self.cache_dir / "releases" / f"{version}-{ref.manifest_sha256[:16]}"
        manifest = self.api.download(ref.manifest, local / "manifest.yaml", ref.manifest_sha256)
        signature = self.api.download(ref.signature, local / "manifest.yaml.sig")
        try:
            parsed = ReleaseManifest.model_validate(yaml.safe_load(manifest.read_bytes()))
        except (yaml.YAMLError, ValidationError) as e:
            raise SshError(f"release {version}: the served manifest is not understood: {e}") from e
        release = parsed.platforms.get(target.platform)
        remote_release = f"{home.releases}/{version}-{ref.manifest_sha256[:16]}"
        session.makedirs(remote_release)
        session.makedirs(home.artifacts)
        session.upload(manifest, f"{remote_release}/manifest.yaml")
        session.upload(signature, f"{remote_release}/manifest.yaml.sig")
        for entry in release.files if release is not None else []:
            path = self.api.download(
                ref.artifacts + entry.sha256, self.cache_dir / "artifacts" / entry.sha256,
                entry.sha256,
            )  # fmt: skip
            session.upload(path, f"{home.artifacts}/{entry.sha256}")
        doc = Plan(
            generated_at=datetime.now(UTC),
            inventory=InventoryRef(root=remote_release, digest="ssh"),
            state=StateRef(url=self.api.url, reports=1, reports_digest="ssh"),
            summary={plan.action.value: 1},
            devices=[plan],
            releases={
                version: ReleaseRef(
                    version=ref.version,
                    serial=ref.serial,
                    manifest=f"{remote_release}/manifest.yaml",
                    signature=f"{remote_release}/manifest.yaml.sig",
                    manifest_sha256=ref.manifest_sha256,
                    artifacts=home.artifacts + "/",
                    artifacts_by_hash=True,
                )
            },
        )
        session.write(home.plan, doc.model_dump_json(indent=1).encode())
        return home.plan


class _Remote:
    """Paths of one device's files on its host."""

    def __init__(self, session: SshSession, target: SshTarget) -> None:
        root = session.path(target.runtime_dir)
        self.device_dir = f"{root}/devices/{target.device}"
        self.config = f"{self.device_dir}/config.yaml"
        self.plan = f"{self.device_dir}/plan.json"
        self.state_dir = f"{self.device_dir}/state"
        self.releases = f"{root}/releases"
        self.artifacts = f"{root}/artifacts"


def _json(text: str, session: SshSession, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise RemoteCommandError(f"{session.endpoint}: {what} did not answer JSON") from e
    if not isinstance(doc, dict):
        raise RemoteCommandError(f"{session.endpoint}: {what} did not answer a JSON object")
    return doc


def _version(value: object) -> Version | None:
    return None if value in (None, "") else Version(str(value))


def _running(status: dict[str, Any]) -> str:
    installed = status.get("installed") or "nothing installed"
    return f"{installed}, agent {'running' if status.get('agent_running') else 'not running'}"


def _report(target: SshTarget, status: dict[str, Any]) -> CheckinRequest:
    """The check-in a pull-mode runtime would send, from ``agent-runtime status --json``."""
    tx = None
    if status.get("last_result"):
        last_run = status.get("last_run")
        tx = TransactionReport(
            target=_version(status.get("desired")),
            result=str(status["last_result"]),
            detail=str(status.get("last_detail") or "")[:2000] or None,
            finished_at=datetime.fromisoformat(last_run) if last_run else None,
        )
    report = CheckinRequest(
        platform=target.platform,
        agent_version=_version(status.get("installed")),
        known_good=_version(status.get("known_good")),
        runtime_version=None,
        agent_running=status.get("agent_running"),
        transaction=tx,
    )
    found = status.get("facts")  # what releases' requires: is checked against
    if not isinstance(found, dict):
        return report  # an older runtime: the facts are unknown
    try:
        return report.model_validate({**report.model_dump(), **found})
    except ValidationError:
        return report  # facts this engine cannot take stay unknown (the plan says so)
