"""benchmarks/bench_scale.py's own logic, without ZFS: how it makes one repository's
record another's, names its commits, spreads its interrupted transactions, checks a
status, and times, drops and reports its commands."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from dsg_storage import names
from dsg_storage.core.records import Commit, RepositoryStatus
from dsg_storage.names import P_COMMITTED, P_MOUNTPOINT, P_PATH, P_REPO, P_TX

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
TX = "20261203T120000Z-abcdef"


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the scripts import each other as scripts
    import bench_scale

    return bench_scale


def template(bench: ModuleType) -> Any:
    name = f"{bench.MANY}/r0000"
    mount = bench.mount_of(name)
    props = {
        P_TX: TX,
        P_REPO: name,
        P_MOUNTPOINT: mount,
        P_PATH: f"{mount}.dsg-tx-{TX}",
        names.P_COMMIT_SNAPSHOT: f"{name}@dsg-commit-20261203T120001.000Z",
        names.P_OWNER: "0:0",
    }
    commit_props = {P_TX: TX, P_COMMITTED: "2026-12-03T12:00:01.000+00:00"}
    return bench.Template(name, props, "dsg-commit-20261203T120001.000Z", commit_props)


def test_a_repository_made_like_another_has_its_own_name_mountpoint_and_transaction(bench: ModuleType) -> None:
    other = f"{bench.MANY}/r0007"
    created, commit = template(bench).like(other)
    tx = created[P_TX]
    assert names.validate_tx_id(tx) != TX
    assert created == {
        "atime": 0,
        P_TX: tx,
        P_REPO: other,
        P_MOUNTPOINT: "/var/tmp/dsg-bench-scale/many/r0007",
        P_PATH: f"/var/tmp/dsg-bench-scale/many/r0007.dsg-tx-{tx}",
        names.P_COMMIT_SNAPSHOT: f"{other}@dsg-commit-20261203T120001.000Z",
        names.P_OWNER: "0:0",
    }
    assert commit == {P_TX: tx, P_COMMITTED: "2026-12-03T12:00:01.000+00:00"}


def test_repository_names_sort_as_they_are_made(bench: ModuleType) -> None:
    made = bench.repo_names(12000)
    assert made[:2] == [f"{bench.MANY}/r00000", f"{bench.MANY}/r00001"] and made == sorted(made)
    assert bench.repo_names(3) == [f"{bench.MANY}/r0000", f"{bench.MANY}/r0001", f"{bench.MANY}/r0002"]


def test_commits_made_within_one_millisecond_still_get_names_that_sort(bench: ModuleType) -> None:
    now = datetime(2026, 12, 3, 12, 0, 0, 123456, tzinfo=UTC)
    assert bench.next_commit_time(None, now) == now
    last, made = None, []
    for _ in range(3):
        last = bench.next_commit_time(last, now)
        made.append(names.commit_snapshot("p/r", last))
    assert made == sorted(set(made))
    later = now + timedelta(seconds=1)
    assert bench.next_commit_time(now, later) == later


def test_interrupted_transactions_are_spread_over_the_repositories(bench: ModuleType) -> None:
    assert bench.evenly(list(range(100)), 4) == [0, 25, 50, 75]
    assert bench.evenly([1, 2], 10) == [1, 2]


def status(**changes: Any) -> RepositoryStatus:
    commit = Commit("p/r@dsg-commit-20261203T120001.000Z", TX, "2026-12-03T12:00:01.000+00:00", None, 1, 2)
    fields: dict[str, Any] = {
        "repository": "p/r",
        "exists": True,
        "mountpoint": "/m/r",
        "mounted_at": ("/m/r",),
        "owner": "0:0",
        "mode": "0755",
        "last_commit": commit,
        "pending": (),
        "leftovers": (),
        **changes,
    }
    return RepositoryStatus(**fields)


def test_a_status_is_an_idle_repository_only_when_all_of_it_says_so(bench: ModuleType) -> None:
    assert bench.status_problem(status(), "/m/r") is None
    assert "not mounted at /m/r" in bench.status_problem(status(mounted_at=()), "/m/r")
    assert bench.status_problem(status(last_commit=None), "/m/r") == "it has no commit"
    assert bench.status_problem(status(replica=True), "/m/r") == "it is taken for a replica"


def test_boundary_steps_are_counted_by_what_they_do_to_mounts(bench: ModuleType) -> None:
    kinds = {op: bench.mount_kind(op) for op in ("mount", "detach", "unmount", "freeze", "thaw", "batch", "mkdir")}
    assert kinds == {
        "mount": "mounts",
        "detach": "unmounts",
        "unmount": "unmounts",
        "freeze": "remounts",
        "thaw": "remounts",
        "batch": None,
        "mkdir": None,
    }


class FakeRuns:
    """Seconds and output per command, in the order they are asked for."""

    def __init__(self, bench: ModuleType, times: dict[str, list[float]]) -> None:
        self.bench, self.times = bench, times
        self.calls: list[str] = []

    def __call__(self, argv: Sequence[str]) -> tuple[float, str]:
        self.calls.append(argv[0])
        if argv[0] == "broken":
            raise self.bench.CommandFailed("exit 1: no such pool")
        return self.times[argv[0]].pop(0), "ok\n"


def test_rounds_interleave_and_a_slow_failing_or_wrong_command_is_not_repeated(bench: ModuleType) -> None:
    cases = [
        bench.Case("ours", ["ours"], baseline="zfs", per=10),
        bench.Case("zfs", ["zfs"]),
        bench.Case("slow", ["slow"], baseline="zfs"),
        bench.Case("broken", ["broken"], baseline="zfs"),
        bench.Case("wrong", ["wrong"], check=lambda out: "no" if out == "ok\n" else None),
    ]
    runs = FakeRuns(bench, {"ours": [0.3, 0.1, 0.2], "zfs": [0.1, 0.1, 0.1], "slow": [100.0], "wrong": [1.0]})
    bench.measure(cases, runs, rounds=3, slow=60.0)
    assert runs.calls == ["ours", "zfs", "slow", "broken", "wrong", "ours", "zfs", "ours", "zfs"]
    medians = {c.label: sorted(c.samples)[len(c.samples) // 2] for c in cases if c.samples}
    rows = {c.label: c.row(medians) for c in cases}
    assert rows["ours"].split() == [
        "ours",
        "3",
        "200.0",
        "zfs",
        "2.00x",
        "(20.0",
        "ms",
        "per",
        "repository)",
    ]
    assert rows["slow"].split()[:5] == ["slow", "1", "100000.0", "zfs", "1000.00x"]
    assert "not repeated" in rows["slow"]
    assert rows["broken"] == f"{'broken':<52} failed: exit 1: no such pool"
    assert rows["wrong"].endswith("failed: unexpected output: no")


def test_a_second_baseline_prints_its_own_ratio(bench: ModuleType) -> None:
    case = bench.Case("ours", ["ours"], baseline="zfs list", also="by name", samples=[0.6])
    row = case.row({"ours": 0.6, "zfs list": 0.3, "by name": 0.1})
    assert row.split()[3:] == ["zfs", "list", "2.00x", "(6.00x", "by", "name)"]
