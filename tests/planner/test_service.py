"""The engine's use cases (engine.service) on the example repo and a real SQLite store."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.service.apply import StalePlanError, pending_changes, plan_to_apply, record_apply
from engine.service.plan import make_plan, plan_repo
from engine.service.repo import load_repo, open_store
from states.plan import CHANGING_ACTIONS
from tests.planner.test_plan_command import _copy_example, _example_reports, _import, _state


@pytest.fixture
def fleet(tmp_path: Path) -> tuple[Path, str]:
    """The example operator repo copied to tmp_path, with its reports in a fresh store."""
    root = _copy_example(tmp_path)
    url = _state(tmp_path)
    _import(url, _example_reports())
    return root, url


def test_unknown_group_is_refused_before_the_store_is_opened(tmp_path: Path) -> None:
    """plan_repo raises ValueError for an unknown --group and creates no store."""
    root = _copy_example(tmp_path)
    with pytest.raises(ValueError, match="--group nope: no such group"):
        plan_repo(root, state=_state(tmp_path), group="nope")
    assert not (tmp_path / "state.db").exists()
    assert not (root / ".engine").exists()


def test_make_plan_on_an_open_store_equals_plan_repo(fleet: tuple[Path, str]) -> None:
    """make_plan with a loaded repo and an open store gives plan_repo's plan."""
    root, url = fleet
    whole = plan_repo(root, state=url)
    repo = load_repo(root)
    with open_store(repo, url) as store:
        again = make_plan(repo, store, now=whole.generated_at)
    assert again.model_dump(exclude={"inventory"}) == whole.model_dump(exclude={"inventory"})
    assert again.state.url == whole.state.url != ""


def test_pending_changes_count_the_moving_devices(fleet: tuple[Path, str]) -> None:
    """pending_changes counts devices of applicable rollouts that change now or later."""
    root, url = fleet
    repo = load_repo(root)
    with open_store(repo, url) as store:
        plan = make_plan(repo, store)
    changes = pending_changes(plan, repo)
    changing_in_plan = sum(
        1
        for d in plan.devices
        if d.action in CHANGING_ACTIONS and repo.inventory.devices[d.device].pin is None
    )
    assert changes.rollouts and not changes.empty
    assert 0 < changes.changing <= changing_in_plan
    assert changes.moving == changes.changing + changes.waiting


def test_stale_saved_plan_is_refused_and_nothing_recorded(fleet: tuple[Path, str]) -> None:
    """A plan made before the repo changed raises StalePlanError naming why; a fresh one records."""
    root, url = fleet
    saved = plan_repo(root, state=url)
    (root / "engine.yaml").write_text((root / "engine.yaml").read_text() + "\n# edited\n")
    repo = load_repo(root)
    with open_store(repo, url) as store:
        with pytest.raises(StalePlanError) as caught:
            plan_to_apply(repo, store, saved)
        assert caught.value.reasons == [
            "the operator repo changed since the plan was made: engine.yaml changed"
        ]
        fresh = plan_to_apply(repo, store, None).plan
        result = record_apply(store, fresh, repo)
    assert {f"{r.group}@{r.release}" for r in result.rollouts} == set(
        pending_changes(fresh, repo).rollouts
    )
