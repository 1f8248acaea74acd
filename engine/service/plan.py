"""Make a plan: the operator repo and the store's reports through the planner."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from engine.config_digests import config_renderer, with_diffs
from engine.gitinfo import git_info
from engine.planner import plan_fleet
from engine.runtime_releases import list_runtime_releases
from engine.service.repo import load_repo, open_store
from engine.store import Store
from fleetbase.clock import utc_now
from fleetbase.gcpause import gc_paused
from inventory.loader import OperatorRepo
from states.plan import InventoryRef, Plan, StateRef

__all__ = ["check_filters", "make_plan", "plan_repo"]


def check_filters(repo: OperatorRepo, group: str | None, device: str | None) -> None:
    """Raise ValueError when ``group`` or ``device`` is not in the repo's inventory."""
    if group is not None and group not in repo.inventory.groups:
        known = ", ".join(sorted(repo.inventory.groups)) or "none"
        raise ValueError(f"--group {group}: no such group in the inventory (groups: {known})")
    if device is not None and device not in repo.inventory.devices:
        raise ValueError(f"--device {device}: no such device in the inventory")


def make_plan(
    repo: OperatorRepo,
    store: Store,
    *,
    group: str | None = None,
    device: str | None = None,
    now: datetime | None = None,
    diff: bool = False,
) -> Plan:
    """The plan of ``repo`` against the reports in ``store`` (what `engine plan` prints).

    With ``diff`` each device changing config carries its masked config diff.

    Raises ValueError for an unknown ``group`` or ``device`` and StoreError
    when the reports cannot be read.
    """
    check_filters(repo, group, device)
    # Read so that a saved plan never looks fresher than the reports it was made from.
    reports, (count, digest, latest) = store.load_reports_with_digest()
    git = git_info(repo.root)
    inventory_ref = InventoryRef(
        root=str(repo.root),
        digest=repo.digest,
        git_commit=git.commit if git else None,
        git_dirty=git.dirty if git else None,
        files=repo.file_digests,
    )
    state_ref = StateRef(
        url=store.display_url, reports=count, reports_digest=digest, latest_report=latest
    )
    renderer = config_renderer(repo)
    with gc_paused():
        plan = plan_fleet(
            repo,
            reports,
            now if now is not None else utc_now(),
            stale_after=repo.settings.stale_after,
            only_group=group,
            only_device=device,
            inventory_ref=inventory_ref,
            state_ref=state_ref,
            runtime_releases=list_runtime_releases(repo.root),
            configs=renderer.digest if renderer is not None else None,
        )
    if diff and renderer is not None:
        plan = with_diffs(plan, renderer, reports)
    return plan


def plan_repo(
    root: Path,
    *,
    state: str | None = None,
    group: str | None = None,
    device: str | None = None,
    now: datetime | None = None,
    diff: bool = False,
) -> Plan:
    """Load the repo at ``root``, open its store and make the plan.

    Raises InventoryError for a broken operator repo, StoreError for a store
    that cannot be read, and ValueError for an unknown ``group`` or ``device``
    (checked before the store is opened).
    """
    repo = load_repo(root)
    check_filters(repo, group, device)
    with open_store(repo, state) as store:
        return make_plan(repo, store, group=group, device=device, now=now, diff=diff)
