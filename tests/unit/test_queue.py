"""The queue's state machine and retry timing, with an injected clock and a fake ZFS
(pure logic: real-ZFS behaviour is in tests/zfs/test_queue.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dsg_storage import AllowList, DatasetBusyError, DatasetExistsError, ItemState, NotAllowedError, Queue, RetryPolicy
from dsg_storage.queue import Kind, is_transient

from ..fakes import FakeZfs as PoolFake


class FakeZfs:
    """Answers the few calls apply_item makes; fails destroys with ``error`` while set."""

    def __init__(self) -> None:
        self.allow = AllowList(("tank",))
        self.existing = {"tank", "tank/a", "tank/a@s"}
        self.error: Exception | None = None
        self.destroyed: list[str] = []

    def exists(self, name: str) -> bool:
        return name in self.existing

    def destroy(self, name: str) -> None:
        if self.error:
            raise self.error
        self.existing.discard(name)
        self.destroyed.append(name)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def queue(tmp_path: Path, clock: Clock) -> Queue:
    return Queue(
        tmp_path / "q.sqlite", policy=RetryPolicy(max_attempts=4, initial=1, max_delay=5, jitter=0), clock=clock
    )


def test_transient_failures_back_off_exponentially_then_succeed(queue: Queue, clock: Clock) -> None:
    zfs = FakeZfs()
    zfs.error = DatasetBusyError("tank/a@s: busy")
    item = queue.add_destroy("tank/a@s")
    (after,) = queue.run(zfs)  # type: ignore[arg-type]
    assert (after.state, after.attempts, after.next_at) == (ItemState.PENDING, 1, clock.now + 1)
    assert "busy" in (after.last_error or "")
    clock.now += 0.5
    assert queue.run(zfs) == []  # type: ignore[arg-type]  # not due yet: nothing attempted
    clock.now += 0.5
    (after,) = queue.run(zfs)  # type: ignore[arg-type]
    assert (after.attempts, after.next_at) == (2, clock.now + 2)
    zfs.error = None
    clock.now += 2
    (after,) = queue.run(zfs)  # type: ignore[arg-type]
    assert (after.id, after.state, after.attempts) == (item.id, ItemState.DONE, 3)
    assert zfs.destroyed == ["tank/a@s"]


def test_delays_are_capped_and_attempts_bounded(queue: Queue, clock: Clock) -> None:
    zfs = FakeZfs()
    zfs.error = DatasetBusyError("busy")
    queue.add_destroy("tank/a@s")
    delays = []
    for _ in range(4):
        (after,) = queue.run(zfs, due_only=False)  # type: ignore[arg-type]
        delays.append(after.next_at - clock.now)
    assert delays[:3] == [1, 2, 4] and after.state is ItemState.DEAD
    assert RetryPolicy(initial=1, max_delay=5, jitter=0).delay(10) == 5


def test_jitter_stays_within_its_bound() -> None:
    policy = RetryPolicy(initial=2, max_delay=100, jitter=1.5)
    for attempt in (1, 2, 3):
        assert 2 * 2 ** (attempt - 1) <= policy.delay(attempt) <= 2 * 2 ** (attempt - 1) + 1.5


def test_permanent_errors_go_to_dead_letters_at_once(queue: Queue) -> None:
    zfs = FakeZfs()
    zfs.error = NotAllowedError("tank/a@s is outside the allowed pools")
    queue.add_destroy("tank/a@s")
    (after,) = queue.run(zfs)  # type: ignore[arg-type]
    assert (after.state, after.attempts) == (ItemState.DEAD, 1)
    assert "NotAllowedError" in (after.last_error or "")
    assert queue.stats()["counts"] == {"pending": 0, "done": 0, "dead": 1}


def test_a_dependent_clone_is_transient_for_a_destroy_only() -> None:
    exists = DatasetExistsError("has dependent clones")
    assert is_transient(Kind.DESTROY, exists) and not is_transient(Kind.SNAPSHOT, exists)


def test_items_survive_reopening_and_are_not_queued_twice(tmp_path: Path, clock: Clock) -> None:
    with Queue(tmp_path / "q.sqlite", clock=clock) as first:
        a = first.add_destroy("tank/a@s")
        assert first.add_destroy("tank/a@s") == a
        first.add_snapshot("tank/a@later")
    clock.now += 30
    with Queue(tmp_path / "q.sqlite", clock=clock) as again:
        assert [(i.kind, i.target) for i in again.items()] == [
            (Kind.DESTROY, "tank/a@s"),
            (Kind.SNAPSHOT, "tank/a@later"),
        ]
        assert {k: v for k, v in again.stats().items() if k in ("counts", "oldest_pending_age")} == {
            "counts": {"pending": 2, "done": 0, "dead": 0},
            "oldest_pending_age": 30,
        }
        again.drop(a.id)
        assert [i.target for i in again.items()] == ["tank/a@later"]


def test_a_pool_that_is_away_keeps_the_item_pending(queue: Queue) -> None:
    zfs = FakeZfs()
    zfs.existing.clear()  # pool not imported
    queue.add_snapshot("tank/a@later")
    (after,) = queue.run(zfs)  # type: ignore[arg-type]
    assert after.state is ItemState.PENDING and "PoolUnavailableError" in (after.last_error or "")


def test_one_run_finishes_a_chain_of_dependent_items(queue: Queue) -> None:
    """The snapshot can go only once the clone that depends on it is gone, whatever the
    order the items were queued in."""
    zfs = FakeZfs()
    zfs.existing |= {"tank/clone"}
    original_destroy = zfs.destroy

    def destroy(name: str) -> None:
        if name == "tank/a@s" and "tank/clone" in zfs.existing:
            raise DatasetExistsError("tank/a@s: has dependent clones")
        original_destroy(name)

    zfs.destroy = destroy  # type: ignore[method-assign]
    queue.add_destroy("tank/a@s")
    queue.add_destroy("tank/clone")
    items = queue.run(zfs)  # type: ignore[arg-type]
    assert [(i.target, i.state) for i in items] == [("tank/a@s", ItemState.DONE), ("tank/clone", ItemState.DONE)]
    assert zfs.destroyed == ["tank/clone", "tank/a@s"]


def test_a_full_queue_refuses_new_work_and_drops_nothing(tmp_path: Path) -> None:
    from dsg_storage import QueueFullError

    queue = Queue(tmp_path / "q.sqlite", max_pending=2)
    queue.add_destroy("tank/a@1")
    queue.add_destroy("tank/a@2")
    assert queue.add_destroy("tank/a@1").target == "tank/a@1"  # already pending: not refused
    with pytest.raises(QueueFullError, match="full .2 pending items, at most 2.") as caught:
        queue.add_snapshot("tank/a@3")
    assert caught.value.errno == 28 and "queue flush" in str(caught.value)
    assert [i.target for i in queue.items()] == ["tank/a@1", "tank/a@2"]  # nothing dropped
    stats = queue.stats()
    assert (stats["max_pending"], stats["free"], stats["counts"]["pending"]) == (2, 0, 2)
    # once an item is done, there is room again
    zfs = FakeZfs()
    zfs.existing.add("tank/a@1")
    queue.run(zfs)  # type: ignore[arg-type]
    assert queue.stats()["free"] >= 1
    queue.add_snapshot("tank/a@3")


def test_the_bound_comes_from_the_environment_and_is_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dsg_storage import InvalidArgumentError

    monkeypatch.setenv("DSG_STORAGE_QUEUE_MAX_PENDING", "5")
    assert Queue(tmp_path / "q.sqlite").stats()["max_pending"] == 5
    for bad in ("0", "-1", "lots", "٣"):
        monkeypatch.setenv("DSG_STORAGE_QUEUE_MAX_PENDING", bad)
        with pytest.raises(InvalidArgumentError):
            Queue(tmp_path / "q.sqlite")


def test_run_for_one_pool_leaves_the_others_pending(tmp_path: Path) -> None:
    queue = Queue(tmp_path / "q.sqlite")
    queue.add_destroy("tank/a@s")
    queue.add_destroy("other/b@s")
    (item,) = queue.run(FakeZfs(), pool="tank")  # type: ignore[arg-type]
    assert (item.target, item.state) == ("tank/a@s", ItemState.DONE)
    assert [i.target for i in queue.items(ItemState.PENDING)] == ["other/b@s"]


def test_queue_flush_dry_run_lists_the_steps_and_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from dsg_storage.cli.commands import main

    path = tmp_path / "q.sqlite"
    monkeypatch.setenv("DSG_STORAGE_QUEUE", str(path))
    with Queue(path) as queue:
        queue.add_snapshot("tank/a@nightly")
        queue.add_destroy("other/b@s")
        before = queue.items()
    assert main(["--json", "queue", "flush", "--dry-run", "--pool", "tank"]) == 0
    (step,) = json.loads(capsys.readouterr().out)
    assert (step["step"], step["state"], step["attempts"]) == ("snapshot tank/a@nightly", "pending", 0)
    assert main(["queue", "flush", "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "would snapshot tank/a@nightly (item 1)",
        "would destroy other/b@s (item 2)",
    ]
    with Queue(path) as queue:
        assert queue.items() == before


def test_a_runner_limited_to_its_allow_list_leaves_other_items_pending(queue: Queue) -> None:
    """Through sudo, gc runs only the caller's items: others are not attempted, not killed."""
    zfs = FakeZfs()
    zfs.allow = AllowList(("tank/a",))
    zfs.existing |= {"tank/b", "tank/b@s"}
    mine, theirs = queue.add_destroy("tank/a@s"), queue.add_destroy("tank/b@s")
    (after,) = queue.run(zfs, only_allowed=True)  # type: ignore[arg-type]
    assert (after.id, after.state) == (mine.id, ItemState.DONE)
    assert queue.get(theirs.id).state is ItemState.PENDING and queue.get(theirs.id).attempts == 0


def test_stats_for_a_caller_count_only_the_items_it_may_see(queue: Queue, clock: Clock) -> None:
    """Through sudo, stats count the caller's items; free stays the shared bound's."""
    queue.add_destroy("other/b@s")
    clock.now += 10
    queue.add_snapshot("tank/a@s")
    queue.drop(queue.add_destroy("tank/a@old").id)
    queue.add_destroy("tank/a@older")
    clock.now += 5
    everything = queue.stats()
    mine = queue.stats(only=AllowList(("tank",)).allows)
    assert everything["counts"] == {"pending": 3, "done": 0, "dead": 0}
    assert mine["counts"] == {"pending": 2, "done": 0, "dead": 0}
    assert (everything["oldest_pending_age"], mine["oldest_pending_age"]) == (15.0, 5.0)
    assert mine["free"] == everything["free"] == queue.max_pending - 3
    nothing = queue.stats(only=AllowList(("elsewhere",)).allows)
    assert nothing["counts"]["pending"] == 0 and nothing["oldest_pending_age"] is None
    assert set(nothing) == set(everything)  # the same --json fields


# An old head the commit could not retire: the new head is still a clone of its base (a
# reader's snapshot refused the promote), and a dead reader left a snapshot mounted.
REPO, TX = "tank/r", "20261121T071530Z-3fa2c1"
OLD, BASE = f"{REPO}.dsg-old-{TX}", f"{REPO}@dsg-base-{TX}"
HELD = (f"{OLD}@dsg-commit-1", "/tmp/dsg-storage-read-4242-x/m0")


def unretired_pool() -> PoolFake:
    pool = PoolFake()
    pool.datasets["tank"] = {"mountpoint": "none"}
    pool.datasets[OLD] = {"mountpoint": "none"}
    pool.datasets[REPO] = {"mountpoint": "none", "origin": f"{OLD}@dsg-base-{TX}"}
    pool.snaps[HELD[0]] = {"createtxg": "1"}
    pool.snaps[f"{OLD}@dsg-base-{TX}"] = {"createtxg": "2"}
    pool.host.table[HELD[0]] = [HELD[1]]
    pool.host.orphaned_reader_mounts = lambda: [HELD]  # type: ignore[method-assign]
    return pool


def test_a_queued_old_head_is_retired_as_recovery_retires_it(queue: Queue) -> None:
    pool = unretired_pool()
    old, base = queue.add_destroy(OLD), queue.add_destroy(BASE)
    items = queue.run(pool)
    assert [(i.id, i.state) for i in items] == [(old.id, ItemState.DONE), (base.id, ItemState.DONE)]
    assert set(pool.datasets) == {"tank", REPO} and "origin" not in pool.datasets[REPO]  # promoted, then destroyed
    assert set(pool.snaps) == {f"{REPO}@dsg-commit-1"}  # the history, handed over by the promote
    assert pool.host.mounts() == {}  # the dead reader's mount released first


def test_a_queued_old_head_still_in_use_stays_pending_with_why(queue: Queue) -> None:
    pool = unretired_pool()
    pool.busy.add(OLD)  # the batch's optional destroy skips it; the plain destroy says why

    def busy_destroy(name: str) -> None:
        raise DatasetBusyError(f"cannot destroy {name}: busy", dataset=name)

    pool.destroy = busy_destroy  # type: ignore[method-assign]
    queue.add_destroy(OLD)
    (item,) = queue.run(pool)
    assert (item.state, item.attempts) == (ItemState.PENDING, 1) and "busy" in (item.last_error or "")
    assert OLD in pool.datasets and "origin" not in pool.datasets[REPO]  # the promote was done meanwhile
