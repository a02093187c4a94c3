#!/usr/bin/env python3
"""begin+commit through dsg-storage vs the naive way (one ``zfs`` command per step).

Run against real ZFS (inside the VM when this machine has none):

    ./testpool/run python3 benchmarks/bench_transactions.py [--runs 20]

Both ways are timed in the same run, interleaved, on the same pool, with the same file
writes and chown/chmod; the ratio naive/ours is printed per case. The ratio is of
begin+commit: the time spent writing the transaction's files (the caller's work, the same
both ways, and with 100 files most of a sync row) is taken out and shown beside it, with
the ratio it would make. Each row starts on a pool without the previous rows' datasets. Two pool layouts:
``inherited`` (repositories under a parent whose mountpoint gives theirs, the idiomatic
layout) and ``explicit`` (each repository has its own mountpoint property); each row also
shows the sync tasks our begin+commit cost (the boundary counts them) against the naive
way's ``zfs`` commands. Then a sync begin+commit alone under its parent and beside 200
sibling datasets (``--only siblings``), and sync commit latency at 10, 100 and 1,000
snapshots in both layouts, with the commit's promoting sync task timed apart and
lzc_promote alone.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import attrs

from dsg_storage import AllowList, Repository
from dsg_storage.zfs.boundary import Zfs

ROOT = "dsgtest/bench"
MOUNT_BASE = Path("/var/tmp/dsg-bench")
OWNER = (1000, 1000)
FILES = 100


def zfs(*args: str) -> None:
    subprocess.run(["zfs", *args], check=True, capture_output=True)


#: Milliseconds spent writing the transaction's files so far: the caller's work, the same
#: both ways, which ``timed`` takes out of begin+commit (and shows beside it).
WRITING = [0.0]


def write_files(path: str, count: int, tag: str) -> None:
    started = time.perf_counter()
    for n in range(count):
        Path(path, f"f{n:03d}.txt").write_text(f"{tag} {n}\n" * 64)
    WRITING[0] += (time.perf_counter() - started) * 1000


def fix_owner(path: str) -> None:
    os.chown(path, *OWNER)
    os.chmod(path, 0o750)


class Layout:
    """Where repositories live and how the naive script does each step."""

    def __init__(self, name: str, inherited: bool) -> None:
        self.name = name
        self.inherited = inherited
        self.parent = f"{ROOT}/{name}"
        self.base = MOUNT_BASE / name
        zfs("create", "-o", f"mountpoint={self.base}" if inherited else "mountpoint=none", self.parent)
        self.counter = 0

    def clean(self) -> None:
        """Destroy every repository made so far (not timed)."""
        for child in subprocess.run(
            ["zfs", "list", "-H", "-o", "name", "-d", "1", self.parent], capture_output=True, text=True, check=True
        ).stdout.split()[1:]:
            zfs("destroy", "-r", "-f", child)

    def fresh(self, prefix: str) -> tuple[str, str]:
        self.counter += 1
        leaf = f"{prefix}{self.counter}"
        return f"{self.parent}/{leaf}", str(self.base / leaf)

    # ---- naive: what a shell script does, one zfs command per step ------------------
    def naive_init(self, name: str, mnt: str, files: int) -> None:
        tmp = f"{name}-tmp"
        tmp_mnt = f"{mnt}-tmp"
        if self.inherited:
            zfs_counted("create", tmp)  # mounted at the inherited path
        else:
            zfs_counted("create", "-o", f"mountpoint={tmp_mnt}", tmp)
        fix_owner(tmp_mnt)
        write_files(tmp_mnt, files, "init")
        zfs_counted("rename", tmp, name)  # remounted at its new inherited path, or kept at tmp_mnt
        if not self.inherited:
            zfs_counted("set", f"mountpoint={mnt}", name)
        fix_owner(mnt)
        zfs_counted("snapshot", f"{name}@commit-{time.monotonic_ns()}")

    def naive_sync(self, name: str, mnt: str, files: int, tag: str) -> None:
        base, ws, old = f"{name}@base", f"{name}-ws", f"{name}-old"
        ws_mnt = f"{mnt}-ws"
        zfs_counted("snapshot", base)
        if self.inherited:
            zfs_counted("clone", base, ws)
        else:
            zfs_counted("clone", "-o", f"mountpoint={ws_mnt}", base, ws)
        fix_owner(ws_mnt)
        write_files(ws_mnt, files, tag)
        zfs_counted("promote", ws)
        zfs_counted("rename", name, old)
        if not self.inherited:
            zfs_counted("destroy", old)  # frees the mountpoint before the new head takes it
        zfs_counted("rename", ws, name)
        if self.inherited:
            zfs_counted("destroy", old)
        else:
            zfs_counted("set", f"mountpoint={mnt}", name)
        fix_owner(mnt)
        zfs_counted("destroy", base)
        zfs_counted("snapshot", f"{name}@commit-{time.monotonic_ns()}")

    # ---- ours ----------------------------------------------------------------------
    def ours_init(self, engine: Zfs, name: str, mnt: str, files: int) -> None:
        tx = Repository(name, zfs=engine).begin(mountpoint=mnt, owner=OWNER, mode=0o750)
        write_files(tx.path, files, "init")
        tx.commit()

    def ours_sync(self, engine: Zfs, name: str, files: int, tag: str) -> None:
        tx = Repository(name, zfs=engine).begin()
        write_files(tx.path, files, tag)
        tx.commit()


def timed(fn: Callable[[], None]) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000


def timed_apart(fn: Callable[[], None]) -> tuple[float, float]:
    """(begin+commit, the file writes in between), in ms."""
    WRITING[0] = 0.0
    total = timed(fn)
    return total - WRITING[0], WRITING[0]


@attrs.frozen
class Row:
    ours: float  # begin+commit, medians in ms
    naive: float
    ours_writes: float  # the files written in between
    naive_writes: float


def side_by_side(runs: int, ours: Callable[[int], None], naive: Callable[[int], None]) -> Row:
    mine, theirs = [], []
    for n in range(runs):  # interleaved, so drift in the machine hits both alike
        mine.append(timed_apart(functools.partial(ours, n)))
        theirs.append(timed_apart(functools.partial(naive, n)))
    return Row(
        *(statistics.median(x[i] for x in samples) for samples, i in ((mine, 0), (theirs, 0), (mine, 1), (theirs, 1)))
    )


def report(case: str, row: Row, syncs: int, commands: int) -> None:
    with_writes = (row.naive + row.naive_writes) / (row.ours + row.ours_writes)
    print(
        f"{case:<26} ours {row.ours:7.1f} ms   naive {row.naive:7.1f} ms   ratio {row.naive / row.ours:5.2f}x"
        f"   (with the writes {row.ours_writes:6.1f} / {row.naive_writes:6.1f} ms: {with_writes:5.2f}x)"
        f"   sync tasks ours {syncs} / naive {commands} zfs commands",
        flush=True,
    )


class Counted:
    """How many sync tasks one call of ``fn`` cost through ``engine`` (the boundary counts
    them), and how many ``zfs`` commands the naive way ran."""

    def __init__(self, engine: Zfs) -> None:
        self.engine = engine
        self.syncs = 0

    def __call__(self, fn: Callable[[], None]) -> None:
        before = self.engine.steps.syncs
        fn()
        self.syncs = self.engine.steps.syncs - before


COMMANDS = 0


def zfs_counted(*args: str) -> None:
    global COMMANDS
    COMMANDS += 1
    zfs(*args)


def bench_layout(layout: Layout, engine: Zfs, runs: int) -> None:
    count = Counted(engine)
    for files in (0, FILES):
        label = "empty" if files == 0 else f"{files} files"

        def ours_init(_: int, files: int = files) -> None:
            count(lambda: layout.ours_init(engine, *layout.fresh("oi"), files))

        def naive_init(_: int, files: int = files) -> None:
            global COMMANDS
            COMMANDS = 0
            layout.naive_init(*layout.fresh("ni"), files)

        report(f"{layout.name:<9} init {label}", side_by_side(runs, ours_init, naive_init), count.syncs, COMMANDS)
        layout.clean()  # so that the next row does not pay for this one's datasets and mounts

        ours_repo, _ = layout.fresh("os")
        layout.ours_init(engine, ours_repo, str(layout.base / ours_repo.rsplit("/", 1)[1]), files)
        naive_repo, naive_mnt = layout.fresh("ns")
        layout.naive_init(naive_repo, naive_mnt, files)

        def ours_sync(n: int, files: int = files, repo: str = ours_repo) -> None:
            count(lambda: layout.ours_sync(engine, repo, files, f"v{n}"))

        def naive_sync(n: int, files: int = files, repo: str = naive_repo, mnt: str = naive_mnt) -> None:
            global COMMANDS
            COMMANDS = 0
            layout.naive_sync(repo, mnt, files, f"v{n}")

        report(f"{layout.name:<9} sync {label}", side_by_side(runs, ours_sync, naive_sync), count.syncs, COMMANDS)
        layout.clean()


def bulk_snapshots(name: str, count: int) -> None:
    """``count`` snapshots of ``name`` (a channel program may snapshot a dataset only once)."""
    import libzfs_core

    for i in range(count):
        libzfs_core.lzc_snapshot([f"{name}@bulk-{i:05d}".encode()])


HISTORY = (10, 100, 1000)
SIBLINGS = 200


def bench_siblings(engine: Zfs, runs: int) -> None:
    """Sync begin+commit, both ways, alone under its parent and then beside SIBLINGS other
    repositories (the layout of a host with many repositories under one parent): every
    read of a repository's family lists its parent's children."""
    import libzfs_core

    layout = Layout("siblings", True)
    ours_repo, ours_mnt = layout.fresh("os")
    layout.ours_init(engine, ours_repo, ours_mnt, 0)
    naive_repo, naive_mnt = layout.fresh("ns")
    layout.naive_init(naive_repo, naive_mnt, 0)

    def ours(n: int) -> None:
        layout.ours_sync(engine, ours_repo, 0, f"v{n}")

    def naive(n: int) -> None:
        layout.naive_sync(naive_repo, naive_mnt, 0, f"v{n}")

    alone = side_by_side(runs, ours, naive)
    for i in range(SIBLINGS):  # not mounted (canmount=off): only their number counts
        libzfs_core.lzc_create(f"{layout.parent}/sibling{i:04d}".encode(), props={b"canmount": 0})
    crowded = side_by_side(runs, ours, naive)
    print(
        f"sync begin+commit beside {SIBLINGS} sibling datasets: ours {crowded.ours:7.1f} ms"
        f" ({crowded.ours / alone.ours:4.2f}x of alone, {alone.ours:7.1f} ms),"
        f" naive {crowded.naive:7.1f} ms ({crowded.naive / alone.naive:4.2f}x of alone)",
        flush=True,
    )


def bench_scaling(layout: Layout, engine: Zfs, runs: int) -> None:
    """Sync commit latency by history size; the commit's first sync task (the one with the
    promote, which moves every older snapshot) timed apart, and lzc_promote alone."""
    import libzfs_core

    repos = {}
    for count in HISTORY:
        name, mnt = layout.fresh(f"snaps{count}-")
        layout.ours_init(engine, name, mnt, 10)
        bulk_snapshots(name, count - 1)
        repos[count] = name
    commit: dict[int, list[float]] = {c: [] for c in HISTORY}
    promote_task: dict[int, list[float]] = {c: [] for c in HISTORY}
    marks: list[tuple[float, str]] = []
    for n in range(runs):
        for count, name in repos.items():
            tx = Repository(name, zfs=engine).begin()
            write_files(tx.path, 10, f"v{n}")
            marks.clear()
            engine.steps.observer = lambda step: marks.append((time.perf_counter(), step.op))
            started = time.perf_counter()
            tx.commit()
            commit[count].append((time.perf_counter() - started) * 1000)
            engine.steps.observer = None
            # The commit's first sync task records the intent and promotes the workspace
            # (the O(history) part); it is the first change commit makes after its reads.
            first, op = marks[0]
            assert op == "batch", marks
            promote_task[count].append((first - started) * 1000)
    promote: dict[int, list[float]] = {c: [] for c in HISTORY}
    for n in range(5):
        for count, name in repos.items():
            libzfs_core.lzc_snapshot([f"{name}@p{n}".encode()])
            clone = f"{name}-promote{n}"
            libzfs_core.lzc_clone(clone.encode(), f"{name}@p{n}".encode())
            promote[count].append(timed(lambda clone=clone: libzfs_core.lzc_promote(clone.encode())))
            libzfs_core.lzc_promote(name.encode())  # give the snapshots back
            libzfs_core.lzc_destroy(clone.encode())
    small = statistics.median(commit[HISTORY[0]])
    for count in HISTORY:
        total = statistics.median(commit[count])
        print(
            f"{layout.name:<9} sync commit, {count:>5} snapshots {total:8.1f} ms ({total / small:5.2f}x of 10)"
            f"   of which the promote's sync task {statistics.median(promote_task[count]):7.1f} ms"
            f"   lzc_promote alone {statistics.median(promote[count]):7.1f} ms",
            flush=True,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20, help="timed runs per case (median reported)")
    parser.add_argument("--only", choices=("layouts", "scaling", "siblings"), help="run one part only")
    args = parser.parse_args()
    subprocess.run(["zfs", "destroy", "-r", ROOT], capture_output=True, check=False)
    zfs("create", "-o", "mountpoint=none", ROOT)
    engine = Zfs(AllowList((ROOT,)))
    print(f"median of {args.runs} runs each; naive = one zfs command per step", flush=True)
    try:
        if args.only in (None, "layouts"):
            for layout in (Layout("inherited", True), Layout("explicit", False)):
                bench_layout(layout, engine, args.runs)
        if args.only in (None, "siblings"):
            bench_siblings(engine, args.runs)
        if args.only in (None, "scaling"):
            for layout in (Layout("scaling-inherited", True), Layout("scaling-explicit", False)):
                bench_scaling(layout, engine, max(3, args.runs // 2))
    finally:
        subprocess.run(["zfs", "destroy", "-r", ROOT], capture_output=True, check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
