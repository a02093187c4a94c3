"""The read cache: what it holds, its ages, clearing it (SQLite only, no ZFS)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from dsg_storage import CacheMissError
from dsg_storage.cli.commands import main
from dsg_storage.read.cache import ReadCache, age_of
from dsg_storage.read.reader import CachedReader


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_stats_and_clear(tmp_path: Path) -> None:
    clock = Clock(1_800_000_000.0)
    cache = ReadCache(tmp_path / "c.sqlite", clock=clock)
    assert cache.stats().entries == {} and cache.stats().oldest is None
    cache.record("history", "tank/a", [])
    clock.now += 60
    cache.record("history", "tank/b", [])
    cache.record("repositories", "tank", [])
    stats = cache.stats()
    assert stats.entries == {"history": 2, "repositories": 1}
    assert stats.oldest == "2027-01-15T08:00:00+00:00" and stats.newest == "2027-01-15T08:01:00+00:00"
    assert stats.file_bytes > 0
    cache.record("history", "tank/a", [1])  # one copy per read: replaced, not added
    assert cache.stats().entries == {"history": 2, "repositories": 1}
    assert cache.clear("repositories") == 1
    assert cache.clear() == 2 and cache.stats().entries == {}


def test_every_cached_answer_says_its_age(tmp_path: Path) -> None:
    clock = Clock(1_800_000_000.0)
    cache = ReadCache(tmp_path / "c.sqlite", clock=clock)
    cache.record("history", "tank/a", [])
    clock.now += 90
    assert cache.get("history", "tank/a").age(clock.now) == 90
    reader = CachedReader(cache, pool="tank", reason="test")
    assert reader.history("tank/a") == []
    assert reader.freshness("history", "tank/a") == ("cached", 90.0)
    assert age_of("2027-01-15T08:00:00+00:00", 1_700_000_000.0) == 0.0  # a clock behind: never negative


def test_an_unreadable_time_in_the_cache_is_a_clear_error(tmp_path: Path) -> None:
    cache = ReadCache(tmp_path / "c.sqlite")
    with sqlite3.connect(tmp_path / "c.sqlite") as db:
        db.execute("INSERT INTO reads VALUES ('history', 'tank/a', '[]', 'not a time')")
    with pytest.raises(CacheMissError, match="unreadable time"):
        cache.get("history", "tank/a").age(0)


def test_cache_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "c.sqlite")
    ReadCache(path).record("history", "tank/a", [])
    assert main(["--json", "--cache", path, "cache", "stats"]) == 0
    assert '"entries": {"history": 1}' in capsys.readouterr().out
    assert main(["--cache", path, "cache", "clear"]) == 0
    assert "1 cached reads cleared" in capsys.readouterr().out
    assert main(["cache", "stats"]) == 2  # no cache named


GOOD_COMMIT = {
    "snapshot": "tank/a@dsg-commit-20261121T101010123Z",
    "tx": "20261121T101010Z-abcdef",
    "committed": "2026-11-21T10:10:10Z",
    "message": "nightly",
    "guid": 7,
    "createtxg": 10,
}


@pytest.mark.parametrize(
    "payload",
    [
        "not json",
        '{"a": 1}',
        "[1]",
        json.dumps([{**GOOD_COMMIT, "guid": "7"}]),
        json.dumps([{**GOOD_COMMIT, "message": 5}]),
        json.dumps([{k: v for k, v in GOOD_COMMIT.items() if k != "tx"}]),
        "[" * 100_000 + "]" * 100_000,
    ],
)
def test_a_damaged_cached_read_is_a_clear_error(tmp_path: Path, payload: str) -> None:
    """The cache is a file its user (or anything running as them) can change."""
    cache = ReadCache(tmp_path / "c.sqlite")
    with sqlite3.connect(tmp_path / "c.sqlite") as db:
        db.execute("INSERT INTO reads VALUES ('history', 'tank/a', ?, '2026-12-01T00:00:00+00:00')", (payload,))
    with pytest.raises(CacheMissError, match="unreadable history of tank/a"):
        CachedReader(cache, pool="tank").history("tank/a")


def test_a_cached_read_that_is_sound_reads_back(tmp_path: Path) -> None:
    cache = ReadCache(tmp_path / "c.sqlite")
    cache.record("history", "tank/a", [GOOD_COMMIT, {**GOOD_COMMIT, "message": None}])
    cache.record(
        "repositories",
        "tank",
        [{"name": "tank/a", "mountpoint": None, "owner": "0:0", "mode": None, "commits": 2, "last_commit": None}],
    )
    reader = CachedReader(cache, pool="tank")
    assert [c.message for c in reader.history("tank/a")] == ["nightly", None]
    assert [r.commits for r in reader.repositories()] == [2]
