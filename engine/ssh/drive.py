"""`engine apply --transport ssh`: set up the relay for agentless devices and drive rounds.

Before planning, each SSH device is checked in once (its report is what the
plan is made from); after the rollouts are recorded, rounds run for their SSH
devices every ``poll`` seconds until every rollout settled and no device of
them still waits to take a plan or finish a rollback.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path

from sqlalchemy import select

from engine.rollouts.model import DeviceState
from engine.rollouts.status import RolloutStatus
from engine.server.credentials import ENROLLMENT_SECRET_FILE, ENV_ENROLLMENT_SECRET, load_credential
from engine.server.errors import CredentialError
from engine.service.apply import follow_rollouts
from engine.ssh._device_client import DeviceApiClient
from engine.ssh._runtime import RuntimeInstaller
from engine.ssh.errors import SshError
from engine.ssh.push import AgentlessRelay, RoundResult
from engine.ssh.targets import ssh_targets
from engine.store import Store
from engine.store.schema import rollout_devices
from inventory.loader import OperatorRepo

__all__ = ["drive_rollouts", "make_relay"]

#: Rollout states in which nothing more happens by itself.
#: Device states that need the device's next check-in.
_WAITING_FOR_DEVICE = frozenset(
    {DeviceState.OFFERED, DeviceState.IN_PROGRESS, DeviceState.ROLLBACK, DeviceState.ROLLING_BACK}
)


def make_relay(
    repo: OperatorRepo,
    *,
    server_url: str | None,
    known_hosts: Path | None = None,
    accept_new: bool = False,
) -> AgentlessRelay:
    """The relay for every inventory device with ssh settings; SshError when it cannot work."""
    url = server_url or repo.settings.server_url
    if not url:
        raise SshError(
            "--transport ssh checks devices in with engine serve: pass --server URL "
            "or set server_url in engine.yaml"
        )
    try:
        secret = load_credential(repo.root, ENV_ENROLLMENT_SECRET, ENROLLMENT_SECRET_FILE,
                                 create=False).value  # fmt: skip
    except CredentialError as e:
        raise SshError(f"the enrollment secret of engine serve is needed: {e}") from e
    keys = [(repo.root / p).read_text().strip() for p in repo.settings.trusted_keys]
    targets, _ = ssh_targets(repo, sorted(repo.inventory.devices), known_hosts=known_hosts)
    missing = [d for d, t in targets.items() if not keys and "trusted_keys" not in t.runtime_config]
    if missing:
        raise SshError(
            f"agentless devices pin the release signing keys: list them in engine.yaml "
            f"trusted_keys (needed for {', '.join(missing[:5])})"
        )
    state = repo.root / ".engine" / "ssh"
    return AgentlessRelay(
        targets,
        DeviceApiClient(url, secret, state / "tokens"),
        trusted_keys=keys,
        cache_dir=state / "cache",
        installer=RuntimeInstaller(repo.root / repo.settings.runtime_bundles, keys),
        accept_new=accept_new,
    )


def _open_devices(store: Store, ids: list[int]) -> set[str]:
    states = [s.value for s in _WAITING_FOR_DEVICE]
    with store.read() as conn:
        rows = conn.execute(
            select(rollout_devices.c.device).where(
                rollout_devices.c.rollout_id.in_(ids), rollout_devices.c.state.in_(states)
            )
        )
        return {str(d) for (d,) in rows}


def drive_rollouts(
    relay: AgentlessRelay,
    store: Store,
    ids: list[int],
    devices: Iterable[str],
    *,
    forks: int,
    poll: float,
    timeout: float,
    out: Callable[[str], None] = print,
) -> list[RolloutStatus]:
    """Run rounds for ``devices`` until rollouts ``ids`` settle (or ``timeout`` seconds)."""
    members = [d for d in devices if d in relay.targets]
    deadline = time.monotonic() + timeout
    said: dict[str, str] = {}

    def show(res: RoundResult) -> None:
        if res.converged or (not res.ok and said.get(res.device) != res.summary):
            out(f"{res.device}: {res.summary}")
        said[res.device] = res.summary

    while True:
        relay.round_all(members, forks=forks, on_result=show)
        statuses, settled = follow_rollouts(store, ids)
        if settled and not (_open_devices(store, ids) & set(members)):
            return statuses
        if time.monotonic() > deadline:
            out(f"gave up after {timeout:g}s; the rollouts go on when devices check in")
            return statuses
        time.sleep(poll)
