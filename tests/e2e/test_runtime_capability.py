"""A runtime rollout plans only the runtimes that can update themselves, end to end.

Two devices of one group, with real processes against a real `engine serve`:
one runtime runs under the supervisor from a runtime home and reports the
``runtime_update`` feature, the other runs without it. With a runtime release
for the group, `engine plan` shows the unsupervised device blocked with the
reason and what to do; `engine apply` excludes it with that reason (it is
never offered the release, so it never has to refuse it), and the supervised
device updates its runtime.
"""

from __future__ import annotations

import json

import pytest

from engine.capabilities import NOT_SUPERVISED_REASON
from engine.store.schema import reports
from tests.e2e.conftest import MakeFleet, runtime_versions, set_runtime, supervised_fleet
from tests.harness.supervised import SupervisedRuntime
from tests.runtime_releases import ReleaseBundles

# Building the new runtime's venv is slow on a busy machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

GOOD = "0.2.0"


def test_the_plan_blocks_the_unsupervised_runtime_and_the_supervised_one_updates(
    make_fleet: MakeFleet,
    release_bundles: ReleaseBundles,
    supervised: list[SupervisedRuntime],
) -> None:
    policy = {"waves": [100], "max_parallel": 2, "soak": "1s", "max_failure_rate": 0.0}
    fleet, view = supervised_fleet(
        make_fleet, release_bundles, supervised, 2, policy, {GOOD: False}, unsupervised=1,
        server_env={"ENGINE_ROLLOUT_UPDATE_TIMEOUT": "1h"},
    )  # fmt: skip
    (sup,) = supervised
    able = sup.device.id
    (plain,) = set(fleet.devices) - {able}
    base = release_bundles.base_version
    features = dict(view._rows(reports.select().with_only_columns(reports.c.device,
                                                                  reports.c.features)))  # fmt: skip
    assert json.loads(features[able]) == ["config", "runtime_update"]
    assert json.loads(features[plain]) == ["config"]

    set_runtime(fleet, GOOD)
    planned = fleet.repo.engine("plan", "--json", check=False)
    assert planned.returncode == 0, planned.stderr
    by = {d["device"]: d for d in json.loads(planned.stdout)["runtime_devices"]}
    assert (by[plain]["action"], by[plain]["reason"]) == ("blocked", NOT_SUPERVISED_REASON)
    assert (by[able]["action"], by[able]["reason"]) == ("update", f"runtime {base} -> {GOOD}")
    shown = " ".join(fleet.repo.engine("plan", "--verbose", check=False).stdout.split())
    assert "runtime is not supervised" in shown and "reinstall it with the field installer" in shown
    lines = fleet.repo.engine("devices", "list").stdout.splitlines()
    header = lines[0].split()
    listed = {r.split()[0]: r.split() for r in lines[1:]}
    at = header.index("RUNTIME")
    assert header[at + 1] == "SELF-UPDATE"
    assert listed[able][at : at + 2] == [base, "yes"]
    assert listed[plain][at : at + 2] == [base, "no"]

    applied = fleet.repo.engine("apply", "--yes", "--wait", check=False, timeout=600)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    rollout = view.rollout(f"fleet@runtime-{GOOD}")
    assert rollout.state == "completed", rollout.reason
    rows = {r.device: r for r in view.devices(rollout.id)}
    assert (rows[able].state, rows[able].from_version) == ("succeeded", base)
    assert (rows[plain].state, rows[plain].reason) == ("excluded", NOT_SUPERVISED_REASON)
    assert sup.current() == GOOD and sup.outcome().get("result") == "confirmed"
    versions = runtime_versions(view)
    assert (versions[able], versions[plain]) == (GOOD, base)
    # Never offered, so it never had to refuse: the apply-time refusal was not needed.
    assert "does not run under the supervisor" not in fleet.device(plain).log_text()
