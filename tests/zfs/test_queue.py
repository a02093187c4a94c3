"""The durable queue on real ZFS: deferred destroys, snapshots queued while the pool is
away, and SIGKILL at random points."""

from __future__ import annotations

import json
import os
import random
import subprocess
from collections.abc import Callable
from pathlib import Path

from dsg_storage import ItemState, Queue, Repository, RetryPolicy
from dsg_storage.zfs.boundary import Zfs

from .cli import dsg
from .conftest import Sandbox
from .test_crash_safety import NEW, OLD, export_pool, fill, import_pool, in_child, make_changes
from .test_transactions import OWNER, files


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_destroy_blocked_by_a_dependent_clone_completes_once_the_clone_is_gone(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    base = sandbox.dataset
    sandbox.zfs.create(f"{base}/a")
    sandbox.zfs.snapshot([f"{base}/a@s"])
    sandbox.zfs.clone(f"{base}/c", f"{base}/a@s")
    clock = Clock()
    queue = Queue(tmp_path / "q.sqlite", clock=clock, policy=RetryPolicy(initial=60, jitter=0))
    queue.add_destroy(f"{base}/a@s")

    (item,) = queue.run(sandbox.zfs)
    assert (item.state, item.attempts, item.next_at) == (ItemState.PENDING, 1, clock.now + 60)
    assert "a@s" in (item.last_error or "")
    assert "a@s" in sandbox.datasets()

    sandbox.zfs.destroy(f"{base}/c")
    assert queue.run(sandbox.zfs) == []  # not due before its backoff
    clock.now += 60
    (item,) = queue.run(sandbox.zfs)
    assert (item.state, item.attempts) == (ItemState.DONE, 2)
    assert sandbox.datasets() == ["a"]


def test_a_commit_defers_what_it_cannot_destroy_and_gc_finishes_it(sandbox: Sandbox, tmp_path: Path) -> None:
    queue = Queue(tmp_path / "q.sqlite")
    repo = Repository(f"{sandbox.dataset}/repo", zfs=sandbox.zfs, queue=queue)
    mnt = sandbox.mount_dir / "repo"
    with repo.begin(mountpoint=str(mnt), owner=OWNER, mode="0750") as tx:
        fill(tx.path, OLD)
    tx = repo.begin()
    make_changes(tx.path)
    # Someone snapshots the repository during the transaction and holds it: the old head
    # keeps that snapshot, so the commit cannot destroy it yet (the base, which shows the
    # same, now carries the snapshot's name on the repository: docs/archive/0014).
    subprocess.run(["zfs", "snapshot", f"{repo.name}@mine"], check=True)
    subprocess.run(["zfs", "hold", "backup", f"{repo.name}@mine"], check=True)
    tx.commit()
    assert files(mnt) == NEW
    pending = {i.target.rsplit("/", 1)[1] for i in queue.items(ItemState.PENDING)}
    assert pending == {f"repo.dsg-old-{tx.id}"}
    assert "repo@mine" in sandbox.datasets()

    subprocess.run(["zfs", "release", "backup", f"{repo.name}.dsg-old-{tx.id}@mine"], check=True)
    items = queue.run(sandbox.zfs, due_only=False)
    assert {i.state for i in items} == {ItemState.DONE}
    assert not [d for d in sandbox.datasets() if ".dsg-" in d or "dsg-base" in d]


def test_a_snapshot_requested_while_the_pool_is_exported_is_applied_after_import(
    exclusive_pool: None, sandbox: Sandbox, tmp_path: Path
) -> None:
    env = {**os.environ, "DSG_STORAGE_QUEUE": str(tmp_path / "q.sqlite")}
    repo = f"{sandbox.dataset}/data"
    sandbox.zfs.create(repo)
    export_pool()
    try:
        refused = dsg("snapshot", repo, "--name", "nightly", allow=sandbox.dataset, env=env)
        assert refused.returncode == 1 and "not imported" in refused.stderr
        queued = dsg("snapshot", repo, "--name", "nightly", "--queue", allow=sandbox.dataset, env=env)
        assert queued.returncode == 0, queued.stderr
        item = json.loads(queued.stdout)["queued"]
        assert (item["kind"], item["target"], item["state"]) == ("snapshot", f"{repo}@nightly", "pending")
        early = json.loads(dsg("queue", "flush", allow=sandbox.dataset, env=env).stdout)
        assert early[0]["state"] == "pending" and "not imported" in early[0]["last_error"]
    finally:
        import_pool()
    ran = json.loads(dsg("queue", "flush", allow=sandbox.dataset, env=env).stdout)
    assert [(i["item"], i["state"]) for i in ran] == [(item["item"], "done")]
    assert set(ran[0]) >= {"item", "target", "attempts", "last_error", "age", "state"}
    requested = subprocess.run(["zfs", "get", "-H", "-o", "value", "dsg-storage:requested", f"{repo}@nightly"],
                               capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    assert requested.startswith("20") and requested.endswith("+00:00")
    stats = json.loads(dsg("queue", "stats", env=env).stdout)
    assert stats["counts"] == {"pending": 0, "done": 1, "dead": 0}


def test_permanent_errors_are_dead_letters_at_once(sandbox: Sandbox, tmp_path: Path) -> None:
    queue = Queue(tmp_path / "q.sqlite")
    queue.add_snapshot(f"{sandbox.dataset}/missing@s")  # the dataset does not exist
    queue.add_destroy("dsgtest/not-allowed@s")  # outside the allow-list
    items = queue.run(sandbox.zfs)
    assert [(i.state, i.attempts) for i in items] == [(ItemState.DEAD, 1), (ItemState.DEAD, 1)]
    assert "DatasetNotFoundError" in (items[0].last_error or "")
    assert "NotAllowedError" in (items[1].last_error or "")


KILLS = 30
PER_ROUND = 3


def test_a_queue_runner_killed_at_random_never_loses_or_doubles_an_item(
    sandbox: Sandbox, tmp_path: Path, record_property: Callable
) -> None:
    path = tmp_path / "q.sqlite"
    repo = f"{sandbox.dataset}/data"
    sandbox.zfs.create(repo)
    allow = sandbox.allow

    def runner() -> None:
        with Queue(path) as queue:
            queue.run(Zfs(allow), due_only=False)

    def add(round_: int) -> list[int]:
        with Queue(path) as queue:
            return [queue.add_snapshot(f"{repo}@r{round_:02d}-{n}").id for n in range(PER_ROUND)]

    import time

    ids = add(99)
    started = time.monotonic()
    assert in_child(runner) == "done"
    span = time.monotonic() - started  # how long a runner takes for one round's items
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    killed = rounds = 0
    while killed < KILLS and rounds < 3 * KILLS:  # 30 runners killed midway, not just 30 tries
        ids += add(rounds)
        killed += in_child(runner, kill_after=rng.uniform(0.0, span)) == "killed"
        rounds += 1
    assert in_child(runner) == "done"  # and one to the end
    with Queue(path) as queue:
        items = queue.items()
    assert [(i.id, i.state) for i in items] == [(i, ItemState.DONE) for i in ids]
    snapshots = sorted(d.split("@")[1] for d in sandbox.datasets() if d.startswith("data@"))
    expected = sorted(
        [f"r99-{n}" for n in range(PER_ROUND)] + [f"r{r:02d}-{n}" for r in range(rounds) for n in range(PER_ROUND)]
    )
    assert snapshots == expected  # each exactly once
    queue_ids = subprocess.run(["zfs", "get", "-H", "-o", "value", "-r", "-t", "snapshot", "dsg-storage:queue-id",
                                f"{repo}"], capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    assert sorted(map(int, queue_ids)) == sorted(ids)
    record_property("crash_points", f"queue-runner-kills={killed} in {rounds} rounds (seed {seed})")
    assert killed == KILLS
