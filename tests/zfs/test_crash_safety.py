"""Crash safety on real ZFS: a process killed at any moment leaves every repository at its
old or its new state once recovered, with nothing of ours left behind."""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable
from multiprocessing import get_context
from pathlib import Path

import attrs
import pytest

from dsg_storage import (
    ConflictError,
    Repository,
    TransactionInProgressError,
)
from dsg_storage.zfs.boundary import Zfs
from dsg_storage.zfs.host import BoundaryStep

from .conftest import Sandbox
from .test_transactions import OWNER, files, owner_mode

OLD = {"keep.txt": "same", "change.txt": "old", "delete.txt": "bye"}
NEW = {"keep.txt": "same", "change.txt": "new", "added.txt": "hello"}


def make_changes(path: str) -> None:
    Path(path, "change.txt").write_text("new")
    Path(path, "delete.txt").unlink()
    Path(path, "added.txt").write_text("hello")


def fill(path: str, content: dict[str, str]) -> None:
    for name, text in content.items():
        Path(path, name).write_text(text)


CHILD_LIMIT = 120.0


def stop_when(zfs: Zfs, crash: Callable[[BoundaryStep], bool]) -> None:
    """Make this process SIGKILL itself right after the first change ``zfs`` makes for
    which ``crash`` is true (the boundary counts every change: pool, mounts, directories,
    owners; step numbers count from now)."""
    start = zfs.steps.count

    def observer(step: BoundaryStep) -> None:
        if crash(attrs.evolve(step, index=step.index - start)):
            os.kill(os.getpid(), signal.SIGKILL)

    zfs.steps.observer = observer


def at_step(k: int) -> Callable[[BoundaryStep], bool]:
    return lambda step: step.index == k


#: Changes that leave nothing on disk: after an export and import (what a reboot does)
#: the pool and the host are as a kill at the step before left them, so the sweeps with
#: a reboot skip them (the sweeps without one still kill the process after every step).
GONE_AT_EXPORT = frozenset({"mount", "unmount", "detach", "freeze", "thaw"})


def traced(fn: Callable[[], object], zfs: Zfs, scratch: Path) -> list[str]:
    """The ops of the changes ``fn`` makes through ``zfs``, in order, run once to its end
    in a child (each run of the same operation makes the same steps: ``at_step`` relies
    on it too)."""
    log = scratch / "steps.log"
    log.write_text("")
    start = zfs.steps.count

    def run() -> None:
        def record(step: BoundaryStep) -> None:
            with log.open("a") as out:
                out.write(f"{step.index - start} {step.op}\n")

        zfs.steps.observer = record
        fn()

    assert in_child(run) == "done"
    ops = [line.split(" ", 1) for line in log.read_text().splitlines()]
    assert [int(i) for i, _ in ops] == list(range(1, len(ops) + 1)), ops
    return [op for _, op in ops]


def reboot_sweep_steps(ops: list[str]) -> list[int]:
    """The steps a sweep with a reboot kills at (``GONE_AT_EXPORT``), and the one past the
    last, where the operation finishes."""
    return [k for k, op in enumerate(ops, 1) if op not in GONE_AT_EXPORT] + [len(ops) + 1]


def at_commit_point(workspace: str) -> Callable[[BoundaryStep], bool]:
    """Right after the rename that gives the workspace the repository's name."""
    return lambda step: step.op == "rename" and step.target == workspace


def in_child(
    fn: Callable[[], None],
    crash_at: Callable[[BoundaryStep], bool] | None = None,
    kill_after: float | None = None,
    zfs: Zfs | None = None,
) -> str:
    """Run ``fn`` in a forked child; return "killed" or "done".

    ``crash_at`` (with ``zfs``, the boundary ``fn`` works through) kills the child right
    after the first change it matches (``at_step(k)``: the k-th); ``kill_after`` has the
    parent SIGKILL the child after that many seconds instead.
    """
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            if crash_at:
                assert zfs is not None, "crash_at needs the boundary the child works through"
                stop_when(zfs, crash_at)
            fn()
            code = 0
        except BaseException:  # noqa: BLE001 (reported, and the exit code says it failed)
            traceback.print_exc()
        finally:
            os._exit(code)
    pidfd = os.pidfd_open(pid)
    try:
        ready, _, _ = select.select([pidfd], [], [], CHILD_LIMIT if kill_after is None else kill_after)
        if not ready:
            os.kill(pid, signal.SIGKILL)
    finally:
        os.close(pidfd)
    _, status = os.waitpid(pid, 0)
    assert ready or kill_after is not None, f"the child did not finish within {CHILD_LIMIT}s"
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
        return "killed"
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child failed with status {status}"
    return "done"


def assert_clean(sandbox: Sandbox, repo: Repository, mnt: Path, expected: list[dict[str, str] | None]) -> int:
    """Recover, then check: the repository is at one of ``expected`` (None: absent), mounted
    at ``mnt`` alone, owned as recorded, and nothing temporary of ours is left.
    Returns the index of the state found."""
    repo.recover()
    names = sandbox.datasets()
    leaf = repo.name.removeprefix(sandbox.dataset + "/")
    ours = [n for n in names if n == leaf or n.startswith((leaf + "@", leaf + "."))]
    assert not [n for n in ours if ".dsg-" in n or "@dsg-base-" in n], f"temporary datasets left: {ours}"
    assert all(n == leaf or "@dsg-commit-" in n for n in ours), ours
    tx_dirs = [p.name for p in sandbox.mount_dir.iterdir() if ".dsg-" in p.name]
    assert not tx_dirs, f"workspace directories left: {tx_dirs}"
    snapshots = [f"{sandbox.dataset}/{n}" for n in ours if "@" in n]
    if snapshots:
        holds = subprocess.run(["zfs", "holds", "-H", *snapshots], capture_output=True, text=True, check=True)
        assert holds.stdout == "", f"holds left: {holds.stdout}"
    if not repo.exists():
        assert None in expected
        assert not [k for k in sandbox.mounts() if k.startswith(repo.name + ".")]
        return expected.index(None)
    mine = {k: v for k, v in sandbox.mounts().items() if k == repo.name or k.startswith(repo.name + ".")}
    assert mine == {repo.name: [str(mnt)]}
    assert owner_mode(mnt) == (*OWNER, 0o750)
    state = files(mnt)
    assert state in expected, state
    return expected.index(state)


def existing(sandbox: Sandbox, name: str) -> tuple[Repository, Path]:
    repo = Repository(f"{sandbox.dataset}/{name}", zfs=sandbox.zfs)
    mnt = sandbox.mount_dir / name
    with repo.begin(mountpoint=str(mnt), owner=OWNER, mode="0750") as tx:
        fill(tx.path, OLD)
    return repo, mnt


def crash_every_step(  # noqa: PLR0917  every crash test calls it the same way, in order
    box: Sandbox,
    record_property: Callable[[str, object], None],
    label: str,
    op: str,
    setup: Callable[[int], tuple[Repository, Path, Callable[[], None]]],
    expected: list[dict[str, str] | None],
) -> None:
    """Kill ``op`` after each of its steps in turn (fresh repository each time)."""
    k, opened_when_killed = 0, []
    while True:
        k += 1
        repo, mnt, action = setup(k)
        outcome = in_child(action, crash_at=at_step(k), zfs=box.zfs)
        if op == "begin":
            # A finished begin leaves its transaction open. So may a begin killed right
            # after its last change (the one that marks it open): checked below.
            repo.recover()
            pending = repo.pending()
            if outcome == "done" or pending:
                (opened,) = pending
                assert opened.state == "open"
                repo.abort(opened.tx)
                if outcome == "killed":
                    opened_when_killed.append(k)
        assert_clean(box, repo, mnt, expected)
        if op == "commit":
            assert repo.pending() == [], f"{label}: a killed commit left its transaction open (step {k})"
        if outcome == "done":
            break
        assert k < 40, "the operation never finished"
    assert opened_when_killed in ([], [k - 1]), (
        f"{label}: open after a kill before the last change: {opened_when_killed}"
    )
    record_property("crash_points", f"{label}={k - 1}")
    assert k > 2, f"{label}: only {k - 1} crash points"


@pytest.fixture
def box(sandbox: Sandbox) -> Sandbox:
    return sandbox


def test_init_begin_killed_at_every_step_leaves_nothing(box: Sandbox, record_property: Callable) -> None:
    def setup(k: int) -> tuple[Repository, Path, Callable[[], None]]:
        repo, mnt = Repository(f"{box.dataset}/r{k}", zfs=box.zfs), box.mount_dir / f"r{k}"
        return repo, mnt, lambda: fill(repo.begin(mountpoint=str(mnt), owner=OWNER, mode="0750").path, NEW)

    crash_every_step(box, record_property, "init-begin", "begin", setup, [None])


def test_init_commit_killed_at_every_step_completes(box: Sandbox, record_property: Callable) -> None:
    def setup(k: int) -> tuple[Repository, Path, Callable[[], None]]:
        repo, mnt = Repository(f"{box.dataset}/r{k}", zfs=box.zfs), box.mount_dir / f"r{k}"
        tx = repo.begin(mountpoint=str(mnt), owner=OWNER, mode="0750")
        fill(tx.path, NEW)
        return repo, mnt, lambda: repo.commit(tx.id, "init")

    crash_every_step(box, record_property, "init-commit", "commit", setup, [NEW])


def test_init_rollback_killed_at_every_step_leaves_nothing(box: Sandbox, record_property: Callable) -> None:
    def setup(k: int) -> tuple[Repository, Path, Callable[[], None]]:
        repo, mnt = Repository(f"{box.dataset}/r{k}", zfs=box.zfs), box.mount_dir / f"r{k}"
        tx = repo.begin(mountpoint=str(mnt), owner=OWNER, mode="0750")
        fill(tx.path, NEW)
        return repo, mnt, lambda: repo.rollback(tx.id)

    crash_every_step(box, record_property, "init-rollback", "rollback", setup, [None])


def test_sync_begin_killed_at_every_step_leaves_the_repository_as_it_was(
    box: Sandbox, record_property: Callable
) -> None:
    def setup(k: int) -> tuple[Repository, Path, Callable[[], None]]:
        repo, mnt = existing(box, f"r{k}")
        return repo, mnt, lambda: make_changes(repo.begin().path)

    crash_every_step(box, record_property, "sync-begin", "begin", setup, [OLD])


def test_sync_commit_killed_at_every_step_completes(box: Sandbox, record_property: Callable) -> None:
    def setup(k: int) -> tuple[Repository, Path, Callable[[], None]]:
        repo, mnt = existing(box, f"r{k}")
        tx = repo.begin()
        make_changes(tx.path)
        return repo, mnt, lambda: repo.commit(tx.id, "sync")

    crash_every_step(box, record_property, "sync-commit", "commit", setup, [NEW])


def test_sync_rollback_killed_at_every_step_leaves_the_repository_as_it_was(
    box: Sandbox, record_property: Callable
) -> None:
    def setup(k: int) -> tuple[Repository, Path, Callable[[], None]]:
        repo, mnt = existing(box, f"r{k}")
        tx = repo.begin()
        make_changes(tx.path)
        return repo, mnt, lambda: repo.rollback(tx.id)

    crash_every_step(box, record_property, "sync-rollback", "rollback", setup, [OLD])


def test_recovery_killed_midway_is_itself_recovered(box: Sandbox, record_property: Callable) -> None:
    """A commit killed just after its commit point, then its recovery killed at each step."""

    def setup(k: int) -> tuple[Repository, Path, Callable[[], None]]:
        repo, mnt = existing(box, f"r{k}")
        tx = repo.begin()
        make_changes(tx.path)
        commit_point = at_commit_point(tx.dataset)
        assert in_child(lambda: repo.commit(tx.id), crash_at=commit_point, zfs=box.zfs) == "killed"
        return repo, mnt, repo.recover

    crash_every_step(box, record_property, "recover", "recover", setup, [NEW])


def test_random_kills_during_sync_commits_end_old_or_new(
    box: Sandbox, record_property: Callable, random_kills: int
) -> None:
    repo, mnt = existing(box, "repo")
    current = dict(OLD)
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    # How long an uninterrupted begin+write+commit takes here, to aim the kills inside it.
    span = _timed_child(lambda: _sync_write(repo, "warmup"))
    current = {"n": "warmup"}
    outcomes = {"old": 0, "new": 0}
    for run in range(random_kills):
        target = {"n": str(run)}
        in_child(lambda run=run: _sync_write(repo, str(run)), kill_after=rng.uniform(0, span * 1.2))
        repo.recover()
        for stale in repo.pending():  # killed while open: the user aborts it, as status tells
            assert stale.state == "open"
            repo.abort(stale.tx)
        found = assert_clean(box, repo, mnt, [current, target])
        outcomes["new" if found else "old"] += 1
        current = [current, target][found]
    record_property("random_kills", f"seed={seed} runs={random_kills} old={outcomes['old']} new={outcomes['new']}")


def test_random_kills_of_sync_commits_always_complete_them(
    box: Sandbox, record_property: Callable, random_kills: int
) -> None:
    """A commit killed at a random moment (an OOM kill, a timeout) is completed by
    recovery: no transaction is ever left open, and a new begin works at once."""
    repo, mnt = existing(box, "repo")
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    tx = repo.begin()
    Path(tx.path, "n").write_text("warmup")
    span = _timed_child(lambda: repo.commit(tx.id))
    outcomes = {"new": 0, "not begun": 0}
    current = {**OLD, "n": "warmup"}
    for run in range(random_kills):
        tx = repo.begin()
        Path(tx.path, "n").write_text(str(run))
        in_child(lambda tx=tx: repo.commit(tx.id), kill_after=rng.uniform(0, span * 1.2))
        repo.recover()
        pending = repo.pending()
        if pending:
            # Killed before commit's first change (the one that records the caller's
            # wish): nothing was asked of the pool yet, the transaction is as begin left it.
            assert [(p.tx, p.state) for p in pending] == [(tx.id, "open")], f"run {run} (seed {seed})"
            repo.abort(tx.id)
            outcomes["not begun"] += 1
        else:
            current = {**OLD, "n": str(run)}
            outcomes["new"] += 1
        assert_clean(box, repo, mnt, [current])
        assert repo.pending() == []
    record_property("random_kills", f"commits seed={seed} runs={random_kills} {outcomes}")
    assert outcomes["new"] > outcomes["not begun"], outcomes


def _sync_write(repo: Repository, value: str) -> None:
    with repo.begin() as tx:
        for name in os.listdir(tx.path):
            os.unlink(os.path.join(tx.path, name))
        Path(tx.path, "n").write_text(value)


def _timed_child(fn: Callable[[], None]) -> float:
    import time

    started = time.monotonic()
    assert in_child(fn) == "done"
    return time.monotonic() - started


def test_a_second_begin_is_refused_naming_the_open_transaction(box: Sandbox) -> None:
    repo, mnt = existing(box, "repo")
    first = repo.begin()
    with pytest.raises(TransactionInProgressError) as info:
        repo.begin()
    assert first.id in str(info.value) and f"dsg-storage abort {repo.name} {first.id}" in str(info.value)
    repo.abort(first.id)
    with repo.begin() as second:
        Path(second.path, "x").write_text("x")
    assert files(mnt) == {**OLD, "x": "x"}


def _racer(  # noqa: PLR0917  a Process target: its arguments come as a tuple
    repo_name: str, allow: str, rounds: int, barrier: object, results: object, rollback_own: bool
) -> None:
    from dsg_storage import Repository  # fresh objects in the child

    repo = Repository(repo_name, allow=allow, lock_timeout=30)
    for _ in range(rounds):
        barrier.wait()  # type: ignore[attr-defined]
        try:
            tx = repo.begin()
            won = True
        except TransactionInProgressError:
            won = False
        results.put(won)  # type: ignore[attr-defined]
        barrier.wait()  # type: ignore[attr-defined]
        if won and rollback_own:
            tx.rollback()
        barrier.wait()  # type: ignore[attr-defined]


def _race(repos: list[str], allow: str, rounds: int) -> list[bool]:
    ctx = get_context("fork")
    barrier, results = ctx.Barrier(len(repos)), ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(r, allow, rounds, barrier, results, True)) for r in repos]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in range(rounds * len(repos))]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return outcomes


def test_two_processes_racing_to_begin_never_both_win(box: Sandbox, race_rounds: int) -> None:
    repo, _ = existing(box, "repo")
    rounds = race_rounds
    outcomes = _race([repo.name, repo.name], box.dataset, rounds)
    assert outcomes.count(True) == rounds  # exactly one winner in every round
    assert repo.pending() == []


def test_racing_on_different_repositories_all_win(box: Sandbox, race_rounds: int) -> None:
    a, _ = existing(box, "a")
    b, _ = existing(box, "b")
    rounds = race_rounds
    outcomes = _race([a.name, b.name], box.dataset, rounds)
    assert outcomes == [True] * (2 * rounds)


def test_commit_refuses_to_drop_a_change_made_after_begin(box: Sandbox) -> None:
    repo, mnt = existing(box, "repo")
    history = repo.history()
    tx = repo.begin()
    make_changes(tx.path)
    (mnt / "written-after-begin.txt").write_text("must not be lost")
    with pytest.raises(ConflictError, match=r"changed after transaction .*written-after-begin\.txt"):
        tx.commit()
    assert files(mnt) == {**OLD, "written-after-begin.txt": "must not be lost"}
    assert repo.history() == history
    tx.rollback()
    assert files(mnt) == {**OLD, "written-after-begin.txt": "must not be lost"}
    assert_clean(box, repo, mnt, [{**OLD, "written-after-begin.txt": "must not be lost"}])


def export_pool() -> None:
    subprocess.run(["zpool", "export", "dsgtest"], check=True)


def import_pool() -> None:
    """Import dsgtest again from its file, then mount what ZFS mounts at boot (``zfs mount
    -a``): the tool itself imports with ``-N``, mounting nothing."""
    subprocess.run([sys.executable, "-m", "dsg_storage.testpool.pool", "create"], check=True, capture_output=True)
    subprocess.run(["zfs", "mount", "-a"], check=True, capture_output=True)


def export_and_import() -> None:
    """What a reboot does to the pool."""
    export_pool()
    import_pool()


def test_commit_interrupted_then_pool_reimported_is_recovered(
    exclusive_pool: None, box: Sandbox, record_property: Callable, tmp_path: Path
) -> None:
    """A commit killed after each step that leaves something on disk, then the pool
    exported and imported (``reboot_sweep_steps``), ends new."""

    def committing(k: int) -> Callable[[], object]:
        repo, _ = existing(box, f"r{k}")
        tx = repo.begin()
        make_changes(tx.path)
        return lambda: repo.commit(tx.id)

    ops = traced(committing(0), box.zfs, tmp_path)
    steps = reboot_sweep_steps(ops)
    for k in steps:
        commit = committing(k)
        outcome = in_child(commit, crash_at=at_step(k), zfs=box.zfs)
        assert outcome == ("done" if k > len(ops) else "killed"), (k, ops)
        export_and_import()
        assert_clean(box, Repository(f"{box.dataset}/r{k}", zfs=box.zfs), box.mount_dir / f"r{k}", [NEW])
    record_property("crash_points", f"commit-then-reimport={len(steps) - 1} of {len(ops)} steps")
    assert len(steps) > 2


def test_a_remount_alone_is_not_a_conflict(box: Sandbox) -> None:
    """Mounting writes a little metadata; only changed files count as a conflict."""
    repo, mnt = existing(box, "repo")
    tx = repo.begin()
    make_changes(tx.path)
    subprocess.run(["zfs", "unmount", repo.name], check=True)
    repo.recover()  # mounts the repository again
    tx.commit("after a remount")
    assert files(mnt) == NEW
