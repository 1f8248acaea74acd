"""`GET /metrics` of a real `engine serve` after real rollouts: parsed, equal to the store."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from engine.store import Store
from engine.store.schema import reports, rollouts
from states.plan import StepName
from tests.e2e.conftest import MakeFleet, StoreView, fleet_group, specs
from tests.harness import wait_until

pytestmark = pytest.mark.slow

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str, token: str) -> Samples:
    """/metrics parsed by prometheus_client's own parser: (sample name, labels) -> value."""
    resp = requests.get(url + "/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def store_counts(url: str) -> tuple[Counter[str], Counter[str]]:
    """Devices per reported version, and rollouts per state, as the store has them."""
    with Store.open(url, migrate=False) as store, store.read() as conn:
        versions = Counter(
            {v: n for v, n in conn.execute(
                select(reports.c.agent_version, func.count()).group_by(reports.c.agent_version))}
        )  # fmt: skip
        states = Counter(
            {s: n for s, n in conn.execute(
                select(rollouts.c.state, func.count()).group_by(rollouts.c.state))}
        )  # fmt: skip
    return versions, states


def check_against_store(samples: Samples, view: StoreView, releases: list[str]) -> None:
    """Device counts per version, rollouts per state and update outcomes equal the store's."""
    versions, states = store_counts(view.url)
    for version, n in versions.items():
        assert total(samples, "engine_devices", version=version) == n, version
    assert sum(v for (n, _), v in samples.items() if n == "engine_devices") == sum(
        versions.values()
    )
    for state, n in states.items():
        assert total(samples, "engine_rollouts", state=state) == n, state
    forward = {s.value for s in StepName}
    for release in releases:
        evs = [e for e in view.events(release) if e.step in forward]
        committed = sum(1 for e in evs if e.step == "commit" and e.status == "ok")
        failed = Counter(e.step for e in evs if e.status == "failed")
        got = total(samples, "engine_update_outcomes_total", release=release, result="committed")
        assert got == committed, (release, got, committed)
        for step in forward:
            got = total(
                samples,
                "engine_update_outcomes_total",
                release=release,
                result="failed",
                failed_step=step,
            )
            assert got == failed.get(step, 0), (release, step)
        count = total(samples, "engine_update_duration_seconds_count", release=release)
        assert count == committed


@pytest.mark.parametrize(
    ("workers", "store"),
    [(1, "sqlite"), pytest.param(2, "postgresql", marks=pytest.mark.postgres)],
)
def test_metrics_match_the_store_after_a_rollout(
    make_fleet: MakeFleet, request: pytest.FixtureRequest, workers: int, store: str
) -> None:
    """After 3.0.1 rolls out to 6 real devices (and, on one worker, 3.0.2 fails and halts),
    /metrics parses with prometheus_client's parser; devices per version, rollouts per
    state, outcomes per release and step, and durations match the store, with the
    counters of every worker (and of the controller's process) summed."""
    state: Any = request.getfixturevalue("postgres_url") if store == "postgresql" else None
    fleet = make_fleet(
        specs(6),
        fleet_group("3.0.0", waves=[50, 100], max_parallel=3),
        state=state,
        server_args=["--workers", str(workers)],
    )
    fleet.setup("3.0.0")
    fleet.start()
    fleet.wait_reported("3.0.0")
    view = StoreView(fleet)
    server = fleet.server
    env = {"ENGINE_STATE_URL": state} if state else None

    fleet.repo.set_release("3.0.1")
    applied = fleet.repo.engine("apply", "--yes", "--wait", check=False, timeout=240, env=env)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    fleet.wait_reported("3.0.1")
    live = scrape(server.url, server.admin_token)
    assert total(live, "engine_rollout_devices", rollout="fleet@3.0.1", state="succeeded") == 6
    releases = ["3.0.1"]
    if workers == 1:
        fleet.repo.set_release("3.0.2")  # exits at start: the first failure halts it
        applied = fleet.repo.engine("apply", "--yes", "--wait", check=False, timeout=240, env=env)
        assert applied.returncode == 1, applied.stdout + applied.stderr
        assert view.rollout("fleet@3.0.2").state == "halted"
        releases.append("3.0.2")

    metrics_token = (fleet.repo.root / ".engine" / "metrics.token").read_text().strip()

    def settled() -> bool:
        # Events arrive in the runtimes' batches and reports at their next poll.
        try:
            check_against_store(scrape(server.url, metrics_token), view, releases)
        except AssertionError:
            return False
        return True

    wait_until("/metrics to match the store", settled, timeout=60, interval=1)
    samples = scrape(server.url, server.admin_token)  # the admin token is accepted too
    check_against_store(samples, view, releases)
    assert total(samples, "engine_update_outcomes_total", release="3.0.1") == 6
    assert total(samples, "engine_devices", version="3.0.1", online="true") == 6
    assert total(samples, "engine_enrollments_total", result="enrolled") == 6
    assert total(samples, "engine_checkins_total", status="200") >= 12
    # the controller runs in the serving process's parent with --workers 2: summed in too
    assert total(samples, "engine_controller_tick_seconds_count") > 0
    if workers == 1:
        failed = total(samples, "engine_update_outcomes_total", release="3.0.2", result="failed")
        assert failed >= 1

    no_token = requests.get(server.url + "/metrics", timeout=10)
    assert no_token.status_code == 401
    wrong = requests.get(
        server.url + "/metrics", headers={"Authorization": "Bearer nope"}, timeout=10
    )
    assert wrong.status_code == 403
