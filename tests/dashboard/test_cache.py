"""The dashboard's short memory of aggregate reads: kept within its time, dropped on clear."""

from __future__ import annotations

from engine.server.dashboard._cache import ReadCache


def test_kept_until_cleared() -> None:
    """A second read within the time is the kept answer; after clear it is read again."""
    cache = ReadCache(ttl=3600)
    reads: list[int] = []

    def read() -> int:
        reads.append(1)
        return len(reads)

    assert cache.get("fleet", read) == 1
    assert cache.get("fleet", read) == 1
    assert cache.get("rollouts", read) == 2
    cache.clear()
    assert cache.get("fleet", read) == 3


def test_zero_time_never_keeps() -> None:
    """With no time to keep, every read computes."""
    cache = ReadCache(ttl=0)
    values = iter(range(10))
    assert [cache.get("k", lambda: next(values)) for _ in range(3)] == [0, 1, 2]
