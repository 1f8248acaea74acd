"""The one judge of a heartbeat that the file, server and NATS health checks share."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from agent_runtime.heartbeat_judge import Source, judge_heartbeat, same_version
from fleetbase.version import Version

RESTART = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
NOW = RESTART + timedelta(seconds=20)
BUS = Source(heartbeat="heartbeat on fleet.hb.d1", last="last heartbeat on fleet.hb.d1")


def judge(version: str | Version, at: datetime, max_age: float = 10.0) -> str | None:
    return judge_heartbeat(
        BUS, version, at, expected=Version.parse("3.0.2"), since=RESTART, now=NOW,
        max_age=timedelta(seconds=max_age),
    )  # fmt: skip


def test_a_fresh_heartbeat_of_the_expected_version_after_the_restart_passes() -> None:
    assert judge("3.0.2", NOW - timedelta(seconds=1)) is None
    assert judge(Version.parse("3.0.2"), NOW) is None


@pytest.mark.parametrize(
    ("version", "at", "why"),
    [
        ("3.0.1", NOW, "heartbeat on fleet.hb.d1 says 3.0.1, expected 3.0.2"),
        ("not-a-version", NOW, "heartbeat on fleet.hb.d1 says not-a-version, expected 3.0.2"),
        (
            "3.0.2",
            RESTART,
            f"last heartbeat on fleet.hb.d1 at {RESTART.isoformat()} is from before the "
            f"restart at {RESTART.isoformat()}",
        ),
        (
            "3.0.2",
            RESTART + timedelta(seconds=5),
            "last heartbeat on fleet.hb.d1 is 15.0s old (max_age 10s)",
        ),
    ],
)
def test_each_reason_a_heartbeat_proves_nothing_is_named(
    version: str, at: datetime, why: str
) -> None:
    assert judge(version, at) == why


def test_versions_compare_by_value_not_by_spelling() -> None:
    assert same_version("3.0.2", Version.parse("3.0.2"))
    assert not same_version("3.0.20", Version.parse("3.0.2"))
    assert not same_version("", Version.parse("3.0.2"))
