"""The retention planner: which commits a policy keeps, and why (pure logic, no ZFS)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dsg_storage.core.retention import Candidate, RetentionPolicy, parse_time, plan
from dsg_storage.errors import InvalidArgumentError


def at(text: str) -> str:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).isoformat(timespec="milliseconds")


def commits(*times: str) -> list[Candidate]:
    return [Candidate(f"tank/r@c{n}", at(t)) for n, t in enumerate(times)]


def kept(candidates: list[Candidate], policy: RetentionPolicy, **kw: object) -> list[str]:
    return [d.snapshot.split("@")[1] for d in plan(candidates, policy, **kw).keep]  # type: ignore[arg-type]


def test_the_docstring_example_keeps_the_newest_commit_of_each_of_two_days() -> None:
    cs = commits("2026-11-20T09:00", "2026-11-20T18:00", "2026-11-21T08:00", "2026-11-21T10:00")
    result = plan(cs, RetentionPolicy(daily=2))
    assert [d.snapshot for d in result.keep] == ["tank/r@c1", "tank/r@c3"]
    assert result.destroy == ["tank/r@c0", "tank/r@c2"]
    assert result.keep[0].reasons == ("daily 2026-11-20",)
    assert result.keep[1].reasons == ("latest", "daily 2026-11-21")


def test_keep_last_keeps_the_newest_n_and_always_the_latest() -> None:
    cs = commits(*(f"2026-01-{d:02d}T12:00" for d in range(1, 11)))
    assert kept(cs, RetentionPolicy(last=3)) == ["c7", "c8", "c9"]
    assert kept(cs, RetentionPolicy(last=1)) == ["c9"]
    assert plan(cs, RetentionPolicy(last=3)).keep[-1].reasons == ("latest", "last 1/3")


def test_a_period_without_commits_does_not_use_up_a_slot() -> None:
    # daily commits on the 1st, 2nd, then nothing until the 10th: daily=3 reaches back to the 1st
    cs = commits("2026-03-01T10:00", "2026-03-02T10:00", "2026-03-10T10:00")
    assert kept(cs, RetentionPolicy(daily=3)) == ["c0", "c1", "c2"]
    assert kept(cs, RetentionPolicy(daily=2)) == ["c1", "c2"]


def test_commits_over_months_with_a_mixed_policy() -> None:
    start = datetime(2026, 1, 1, 6, tzinfo=UTC)
    # one commit a day at 06:00 and one at 18:00 for 120 days (Jan 1 .. Apr 30)
    times = [start + timedelta(days=d, hours=h) for d in range(120) for h in (0, 12)]
    cs = [Candidate(f"r@{t:%m%d%H}", t.isoformat()) for t in times]
    result = plan(cs, RetentionPolicy(daily=7, weekly=4, monthly=3))
    names = [d.snapshot.split("@")[1] for d in result.keep]
    days = [f"04{d:02d}18" for d in range(24, 31)]  # the newest of each of the last 7 days
    # weeks: ISO weeks of Apr 30 (Thu, W18), W17 (Sun 26), W16 (Sun 19), W15 (Sun 12)
    weeks = ["041218", "041918", "042618", "043018"]
    months = ["022818", "033118", "043018"]  # newest of April, March, February
    assert names == sorted(set(days + weeks + months))
    reasons = {d.snapshot.split("@")[1]: d.reasons for d in result.keep}
    assert reasons["043018"] == ("latest", "daily 2026-04-30", "weekly 2026-W18", "monthly 2026-04")
    assert reasons["022818"] == ("monthly 2026-02",)
    assert len(result.destroy) == len(cs) - len(names)


def test_hourly_and_yearly_buckets() -> None:
    cs = commits("2024-06-01T00:00", "2025-12-31T23:59", "2026-01-01T00:10", "2026-01-01T00:50", "2026-01-01T01:05")
    assert kept(cs, RetentionPolicy(hourly=2)) == ["c3", "c4"]
    assert kept(cs, RetentionPolicy(yearly=5)) == ["c0", "c1", "c4"]
    assert plan(cs, RetentionPolicy(yearly=1)).keep[0].reasons == ("latest", "yearly 2026")


def test_weeks_are_iso_weeks_starting_on_monday_in_utc() -> None:
    # Sunday 2026-11-22 23:30 UTC and Monday 2026-11-23 00:30 UTC are in different weeks
    cs = commits("2026-11-22T23:30", "2026-11-23T00:30")
    assert kept(cs, RetentionPolicy(weekly=2)) == ["c0", "c1"]
    assert plan(cs, RetentionPolicy(weekly=2)).keep[0].reasons == ("weekly 2026-W47",)


def test_times_in_other_zones_are_bucketed_in_utc() -> None:
    # 2026-05-01 01:00+02:00 is 2026-04-30 23:00 UTC: same day as the April commit
    cs = [Candidate("r@a", "2026-04-30T10:00:00+00:00"), Candidate("r@b", "2026-05-01T01:00:00+02:00")]
    assert [d.snapshot for d in plan(cs, RetentionPolicy(daily=5)).keep] == ["r@b"]
    assert plan(cs, RetentionPolicy(monthly=5)).keep[0].reasons == ("latest", "monthly 2026-04")


def test_the_latest_commit_is_kept_even_when_its_time_is_older() -> None:
    cs = [Candidate("r@new-time", at("2026-02-01T00:00")), Candidate("r@head", at("2026-01-01T00:00"))]
    result = plan(cs, RetentionPolicy(last=1))
    assert [d.snapshot for d in result.keep] == ["r@new-time", "r@head"]
    assert result.keep[1].reasons == ("latest",)


def test_commits_whose_time_cannot_be_read_are_kept() -> None:
    cs = [Candidate("r@a", ""), Candidate("r@b", "yesterday"), Candidate("r@c", "9" * 100), *commits("2026-01-01")]
    result = plan(cs, RetentionPolicy(last=1))
    assert [d.snapshot for d in result.keep] == ["r@a", "r@b", "r@c", "tank/r@c0"]
    assert result.keep[0].reasons == ("commit time unreadable",)


def test_protected_commits_are_kept_with_their_reason() -> None:
    cs = commits("2026-01-01", "2026-01-02", "2026-01-03")
    result = plan(cs, RetentionPolicy(last=1), protected={"tank/r@c0": "held (1 hold)", "tank/r@zz": "not a commit"})
    assert [(d.snapshot, d.reasons) for d in result.keep] == [
        ("tank/r@c0", ("held (1 hold)",)),
        ("tank/r@c2", ("latest", "last 1/1")),
    ]
    assert result.destroy == ["tank/r@c1"]


def test_equal_times_fall_back_to_history_order() -> None:
    cs = commits("2026-01-01T00:00", "2026-01-01T00:00", "2026-01-01T00:00")
    assert kept(cs, RetentionPolicy(daily=1)) == ["c2"]
    assert kept(cs, RetentionPolicy(last=2)) == ["c1", "c2"]


def test_no_commits_plans_nothing() -> None:
    assert plan([], RetentionPolicy(last=1)).decisions == ()


def test_an_empty_policy_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="keeps nothing"):
        plan(commits("2026-01-01"), RetentionPolicy())


@pytest.mark.parametrize("value", [-1, 1.5, "3", True, 10**7])
def test_bad_counts_are_refused(value: object) -> None:
    with pytest.raises(InvalidArgumentError):
        RetentionPolicy(last=value)  # type: ignore[arg-type]


def test_policy_text_round_trips_and_hostile_text_is_refused() -> None:
    policy = RetentionPolicy(last=3, daily=7, yearly=1)
    assert policy.format() == "last=3 daily=7 yearly=1"
    assert RetentionPolicy.parse(policy.format()) == policy
    assert RetentionPolicy.parse("") == RetentionPolicy()
    for bad in (
        "last=3 last=4",
        "daily",
        "daily=-1",
        "daily=x",
        "hours=3",
        "daily=٣",
        "last=1 " * 100,
        "weekly=99999999",
    ):
        with pytest.raises(InvalidArgumentError):
            RetentionPolicy.parse(bad)


def test_parse_time_reads_our_format_and_takes_naive_times_as_utc() -> None:
    assert parse_time("2026-11-21T07:15:30.123+00:00") == datetime(2026, 11, 21, 7, 15, 30, 123000, tzinfo=UTC)
    assert parse_time("2026-11-21T07:15:30") == datetime(2026, 11, 21, 7, 15, 30, tzinfo=UTC)
    assert parse_time("2026-11-21T09:15:30+02:00") == datetime(2026, 11, 21, 7, 15, 30, tzinfo=UTC)
    assert parse_time("garbage") is None and parse_time("") is None
