#!/usr/bin/env python3
"""Many repositories committing at once: aggregate commits per second, ours and naive.

Run against real ZFS (inside the VM when this machine has none):

    ./testpool/run python3 benchmarks/bench_concurrent.py [--rounds 3] [--counts 1,4,16]

For each count N, N repositories of one pool (the inherited layout) each run a sync
begin + write + commit in a process of their own, released at the same moment by a
barrier (the processes' start-up, importing the bindings, is not timed). A round lasts
from the release to the last commit; the aggregate rate is N commits over that. The
naive way (one ``zfs`` command per step, as ``bench_transactions.py`` runs it) is timed
in the same run, round for round interleaved with ours. Printed per N: both rates, ours
over naive, and ours at N over ours at 1 (what ZFS's grouping of concurrent sync tasks
into one transaction group gives, unless something of ours serializes the callers).
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import subprocess
import sys
import time
from multiprocessing.synchronize import Barrier
from pathlib import Path

ROOT = "dsgtest/bench-concurrent"
MOUNT_BASE = Path("/var/tmp/dsg-bench-concurrent")
FILES = 10


def zfs(*args: str) -> None:
    subprocess.run(["zfs", *args], check=True, capture_output=True)


def write_files(path: str, tag: str) -> None:
    for n in range(FILES):
        Path(path, f"f{n:02d}.txt").write_text(f"{tag} {n}\n" * 64)


def ours(name: str, tag: str) -> None:
    from dsg_storage import Repository

    tx = Repository(name, allow=ROOT).begin()
    write_files(tx.path, tag)
    tx.commit()


def naive(name: str, tag: str) -> None:
    """The steps of a shell script: snapshot, clone, write, promote, swap the names."""
    base, ws, old = f"{name}@base", f"{name}-ws", f"{name}-old"
    zfs("snapshot", base)
    zfs("clone", base, ws)
    write_files(str(MOUNT_BASE / Path(ws).name), tag)
    zfs("promote", ws)
    zfs("rename", name, old)
    zfs("rename", ws, name)
    zfs("destroy", old)
    zfs("destroy", base)
    zfs("snapshot", f"{name}@commit-{time.monotonic_ns()}")


def worker(way: str, name: str, tag: str, barrier: Barrier, done: multiprocessing.Queue[float]) -> None:
    if way == "ours":
        import dsg_storage.core.repository  # noqa: F401  (start-up is not what is timed)
        from dsg_storage.zfs.boundary import load_libzfs_core

        load_libzfs_core()
    barrier.wait()
    (ours if way == "ours" else naive)(name, tag)
    done.put(time.perf_counter())


def round_of(way: str, names: list[str], tag: str) -> float:
    """Seconds from the release of ``len(names)`` processes to the last one's commit."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(names) + 1)
    done: multiprocessing.Queue[float] = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(way, name, tag, barrier, done)) for name in names]
    for proc in procs:
        proc.start()
    barrier.wait(timeout=600)
    started = time.perf_counter()
    ends = [done.get(timeout=600) for _ in names]
    for proc in procs:
        proc.join()
        if proc.exitcode != 0:
            sys.exit(f"a {way} worker failed (exit {proc.exitcode})")
    return max(ends) - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--counts", default="1,4,16")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    subprocess.run(["zfs", "destroy", "-r", "-f", ROOT], capture_output=True, check=False)
    zfs("create", "-p", "-o", f"mountpoint={MOUNT_BASE}", ROOT)
    from dsg_storage import Repository

    ourn = [f"{ROOT}/ours{n}" for n in range(max(counts))]
    naiven = [f"{ROOT}/naive{n}" for n in range(max(counts))]
    for name in ourn:
        tx = Repository(name, allow=ROOT).begin(mountpoint=str(MOUNT_BASE / Path(name).name))
        write_files(tx.path, "init")
        tx.commit()
    for name in naiven:
        zfs("create", name)
        write_files(str(MOUNT_BASE / Path(name).name), "init")
        zfs("snapshot", f"{name}@init")
    print(f"{'N':>3} {'ours commits/s':>15} {'naive commits/s':>16} {'ours/naive':>11} {'ours N/1':>9}", flush=True)
    single = None
    for count in counts:
        mine, theirs = [], []
        for r in range(args.rounds):  # interleaved: drift in the machine hits both alike
            mine.append(count / round_of("ours", ourn[:count], f"r{r}"))
            theirs.append(count / round_of("naive", naiven[:count], f"r{r}"))
        rate, naive_rate = statistics.median(mine), statistics.median(theirs)
        single = single or rate
        print(
            f"{count:>3} {rate:>15.2f} {naive_rate:>16.2f} {rate / naive_rate:>10.2f}x {rate / single:>8.2f}x",
            flush=True,
        )
    subprocess.run(["zfs", "destroy", "-r", "-f", ROOT], capture_output=True, check=False)


if __name__ == "__main__":
    main()
