"""Reports in the store: upsert semantics, time zones, loading, digest."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import String, select, text

from engine.store import Store, StoreError, UpsertCounts, digest_reports
from engine.store.schema import reports as reports_table
from fleetbase.platform import Platform
from fleetbase.version import Version
from states.report import Report

T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


def report(device: str, version: str | None = "3.0.1", seen: datetime = T0, **kw: object) -> Report:
    """A valid report, validated like one from a device."""
    return Report.model_validate(
        {"device": device, "agent_version": version, "platform": "linux", "last_seen": seen, **kw}
    )


def test_upsert_inserts_then_updates(store: Store) -> None:
    """New devices are inserted; a newer report replaces every field of the stored one."""
    assert store.import_reports([report("a"), report("b")]) == UpsertCounts(new=2)
    newer = report(
        "a",
        "3.0.2",
        T0 + timedelta(minutes=5),
        known_good="3.0.1",
        runtime_version="1.2",
        last_result="committed",
    )
    assert store.import_reports([newer, report("c")]) == UpsertCounts(new=1, updated=1)
    loaded = store.load_reports()
    assert sorted(loaded) == ["a", "b", "c"]
    assert loaded["a"] == newer
    assert loaded["b"] == report("b")


def test_upsert_returns_rows_written(store: Store) -> None:
    """upsert_reports returns how many reports it wrote, in one call."""
    assert store.upsert_reports(report(f"d{i}") for i in range(3)) == 3
    assert store.upsert_reports([]) == 0
    assert len(store.load_reports()) == 3


def test_older_report_does_not_replace_newer(store: Store) -> None:
    """A report older than the stored one (e.g. an old export) is skipped, not written."""
    store.upsert_reports([report("a", "3.0.2", T0)])
    counts = store.import_reports([report("a", "2.9.0", T0 - timedelta(days=1))])
    assert counts == UpsertCounts(older=1)
    assert store.load_reports()["a"].agent_version == Version("3.0.2")


def test_same_device_twice_last_wins(store: Store) -> None:
    """When one batch holds a device twice the last report given is stored."""
    counts = store.import_reports([report("a", "1.0.0"), report("a", "2.0.0")])
    assert counts == UpsertCounts(new=1)
    assert store.load_reports()["a"].agent_version == Version("2.0.0")


def test_nullable_fields_round_trip(store: Store) -> None:
    """A report with no version, platform or results comes back with None in those fields."""
    bare = Report(device="bare", last_seen=T0)
    store.upsert_reports([bare])
    assert store.load_reports() == {"bare": bare}
    assert store.get_report("bare") == bare
    assert store.get_report("missing") is None


def test_time_zones_round_trip_as_utc(store: Store) -> None:
    """last_seen in any zone comes back as the same instant, timezone-aware, in UTC."""
    berlin = timezone(timedelta(hours=1))
    seen = datetime(2026, 11, 27, 11, 30, 15, 123456, tzinfo=berlin)
    store.upsert_reports([report("a", seen=seen)])
    loaded = store.load_reports()["a"].last_seen
    assert loaded == seen
    assert loaded.tzinfo is UTC
    assert loaded.isoformat() == "2026-11-27T10:30:15.123456+00:00"
    assert store.reports_digest()[2] == seen


def test_order_across_zones_is_by_instant(store: Store) -> None:
    """Comparing with the stored last_seen uses the instant, not the written local time."""
    store.upsert_reports([report("a", "1.0.0", datetime(2026, 1, 1, 10, 0, tzinfo=UTC))])
    # 11:00 at UTC+2 is 09:00 UTC: older, so skipped.
    earlier = datetime(2026, 1, 1, 11, 0, tzinfo=timezone(timedelta(hours=2)))
    assert store.import_reports([report("a", "0.9.0", earlier)]) == UpsertCounts(older=1)


def test_load_many_reports(store: Store) -> None:
    """Ten thousand reports load back exactly, with typed versions and platforms."""
    platforms = list(Platform)
    reports = [
        Report(
            device=f"dev-{i:05d}",
            agent_version=Version(f"3.{i % 7}.{i % 3}"),
            platform=platforms[i % 3],
            last_seen=T0 + timedelta(seconds=i),
            runtime_version=None if i % 2 else "1.0",
            known_good=Version("3.0.0") if i % 5 else None,
            last_result="committed" if i % 4 else None,
        )
        for i in range(10_000)
    ]
    assert store.upsert_reports(reports) == 10_000
    loaded = store.load_reports()
    assert loaded == {r.device: r for r in reports}
    sample = loaded["dev-00042"]
    assert isinstance(sample.agent_version, Version)
    assert sample.platform is Platform.WINDOWS  # 42 % 3 == 0
    assert sample.model_dump() == reports[42].model_dump()


def test_loaded_reports_match_model_construct(store: Store) -> None:
    """Loaded reports are the objects pydantic's model_construct builds (fields set, extras)."""
    values: dict[str, Any] = {
        "device": "a",
        "agent_version": Version("3.0.1"),
        "platform": Platform.LINUX,
        "last_seen": T0,
        "runtime_version": "1.0",
        "known_good": None,
        "last_result": "committed",
        "python_version": "3.11.7",
        "os_version": "6.1.0-18-amd64",
        "components": {"glibc": "2.36", "openssl": "3.0.19"},
        "config_digest": None,
        "features": ("config", "runtime_update"),
    }
    store.upsert_reports([Report(**values)])
    fast, slow = store.load_reports()["a"], Report.model_construct(**values)
    assert fast == slow
    assert fast.__pydantic_fields_set__ == slow.__pydantic_fields_set__
    assert fast.__pydantic_extra__ == slow.__pydantic_extra__
    assert fast.__pydantic_private__ == slow.__pydantic_private__
    assert fast.model_dump_json() == slow.model_dump_json()
    assert fast.model_copy(update={"device": "b"}).device == "b"
    assert fast.device == "a"
    with pytest.raises(ValueError, match="frozen"):
        fast.device = "c"  # type: ignore[misc]


def test_features_round_trip_and_never_said_stays_none(store: Store) -> None:
    """What a runtime said it can do comes back sorted and shared between devices that said
    the same; a report that never said any (an import) comes back None, not empty."""
    store.upsert_reports(
        [
            report("a", features=["runtime_update", "config", "config"]),
            report("b", features=["config", "runtime_update"]),
            report("c", features=[]),
            report("d"),
        ]
    )
    loaded = store.load_reports()
    assert loaded["a"].features == ("config", "runtime_update")
    assert loaded["a"].features is loaded["b"].features  # parsed once per distinct text
    assert loaded["c"].features == ()
    assert loaded["d"].features is None
    assert store.get_report("a") == loaded["a"]
    with store.read() as conn:
        stored = dict(conn.execute(select(reports_table.c.device, reports_table.c.features)).all())
    assert stored == {"a": '["config", "runtime_update"]', "b": '["config", "runtime_update"]',
                      "c": "[]", "d": None}  # fmt: skip


def test_a_report_with_too_many_features_is_refused() -> None:
    with pytest.raises(ValueError, match="at most 20"):
        report("a", features=[f"f{i}" for i in range(21)])
    with pytest.raises(ValueError, match="at most 50 characters"):
        report("a", features=["x" * 51])


def test_digest_of_empty_store(store: Store) -> None:
    """An empty store has count 0, the digest of nothing and no latest report."""
    count, digest, latest = store.reports_digest()
    assert (count, latest) == (0, None)
    assert digest == digest_reports([])[1]


def test_digest_changes_only_with_reports(store: Store) -> None:
    """The digest changes when a report's version or time changes, not on a no-op re-import."""
    reports = [report("a"), report("b", seen=T0 + timedelta(hours=1))]
    store.upsert_reports(reports)
    first = store.reports_digest()
    assert first[0] == 2 and first[2] == T0 + timedelta(hours=1)
    store.upsert_reports(reports)
    assert store.reports_digest() == first
    store.upsert_reports([report("a", "3.0.2")])
    second = store.reports_digest()
    assert second[1] != first[1]
    store.upsert_reports([report("a", "3.0.2", T0 + timedelta(hours=2))])
    third = store.reports_digest()
    assert third[1] not in (first[1], second[1])
    assert third[2] == T0 + timedelta(hours=2)


def test_digest_matches_digest_of_loaded_reports(store: Store) -> None:
    """reports_digest equals digest_reports over load_reports (what saved plans compare)."""
    store.upsert_reports(
        [
            report(f"d{i}", None if i % 3 == 0 else f"1.{i}.0", T0 + timedelta(seconds=i))
            for i in range(50)
        ]
    )
    assert store.reports_digest() == digest_reports(store.load_reports().values())


def test_digest_is_the_same_on_both_backends(postgres_url: str, tmp_path: Path) -> None:
    """SQLite and PostgreSQL stores holding the same reports have the same digest."""
    reports = [report(f"d{i}", f"1.{i}.0", T0 + timedelta(microseconds=i)) for i in range(20)]
    results = []
    for url in (f"sqlite:///{tmp_path}/s.db", postgres_url):
        with Store.open(url) as store:
            store.upsert_reports(reports)
            results.append(store.reports_digest())
    assert results[0] == results[1]


def test_unreadable_stored_row_is_a_store_error(store: Store) -> None:
    """A row holding a bad version (written outside the engine) fails naming the device."""
    store.upsert_reports([report("a")])
    with store.write() as conn:
        conn.execute(text("UPDATE reports SET agent_version = 'not-a-version' WHERE device = 'a'"))
    with pytest.raises(StoreError, match="stored report of device 'a' is unreadable"):
        store.load_reports()


def test_naive_datetime_is_refused_by_the_column(store: Store) -> None:
    """Writing a naive datetime fails instead of storing an ambiguous time, and writes nothing."""
    bad = Report.model_construct(device="n", last_seen=datetime(2026, 1, 1))
    with pytest.raises(StoreError, match="naive datetime"):
        store.upsert_reports([report("ok"), bad])
    assert store.load_reports() == {}


def test_large_batch_counts_new_updated_older(store: Store) -> None:
    """Batches bigger than the IN-list limit count new, updated and older reports correctly."""
    store.upsert_reports(report(f"d{i:04d}", "1.0.0", T0) for i in range(600))
    batch = [
        report(
            f"d{i:04d}", "2.0.0", T0 + timedelta(hours=1) if i < 300 else T0 - timedelta(hours=1)
        )
        for i in range(1000)
    ]
    assert store.import_reports(batch) == UpsertCounts(new=400, updated=300, older=300)
    versions = {d: str(r.agent_version) for d, r in store.load_reports().items()}
    assert versions["d0000"] == "2.0.0"  # newer: replaced
    assert versions["d0599"] == "1.0.0"  # older: kept
    assert versions["d0999"] == "2.0.0"  # new
    assert len(versions) == 1000


def test_one_store_shared_by_threads(store: Store) -> None:
    """Threads sharing one Store (as the server's workers do) write and read without losing data."""
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for i in range(20):
                store.upsert_reports([report(f"w{worker}-{i}", seen=T0 + timedelta(seconds=i))])
                store.load_reports()
        except BaseException as e:  # collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(store.load_reports()) == 6 * 20


def test_upsert_leaves_other_writers_columns_alone(store: Store) -> None:
    """Columns a Report does not carry (e.g. the server's transaction record) survive an upsert."""
    extra = {c.name for c in reports_table.c} - {
        "device",
        "agent_version",
        "platform",
        "last_seen",
        "runtime_version",
        "known_good",
        "last_result",
        "config_digest",
        "updated_at",
    }
    store.upsert_reports([report("a", "1.0.0")])
    text_columns = [
        c.name for c in reports_table.c if c.name in extra and isinstance(c.type, String)
    ]
    if not text_columns:
        pytest.skip("the reports table has no columns beyond the Report's")
    column = text_columns[0]
    with store.write() as conn:
        conn.execute(reports_table.update().values({column: "kept"}))
    store.upsert_reports([report("a", "2.0.0", T0 + timedelta(hours=1))])
    with store.read() as conn:
        row = conn.execute(select(reports_table.c[column], reports_table.c.agent_version)).one()
    assert tuple(row) == ("kept", "2.0.0")


def test_reports_with_digest_equal_the_two_reads(store: Store) -> None:
    """load_reports_with_digest gives what load_reports and reports_digest give, in one read."""
    assert store.load_reports_with_digest() == ({}, store.reports_digest())
    store.upsert_reports(
        [
            report(f"d{i}", None if i % 4 == 0 else f"2.{i}.0", T0 + timedelta(microseconds=7 * i))
            for i in range(40)
        ]
    )
    reports, digest = store.load_reports_with_digest()
    assert reports == store.load_reports()
    assert digest == store.reports_digest() == digest_reports(reports.values())
