#!/usr/bin/env python3
"""A sync begin+commit of two source trees side by side, against its own sync-task floor.

    ./testpool/run python3 benchmarks/ab_commit.py --before OLD_CHECKOUT [--rounds 5] [--cycles 5]

``OLD_CHECKOUT`` holds the other tree's ``src/`` (``git archive COMMIT src | tar -x -C DIR``).
Each round runs, in a fresh interpreter per tree (libzfs_core loaded and one untimed
cycle first), ``--cycles`` sync begin + one file + commit on a repository of its own
under one parent (the inherited layout), the trees in alternating order; the same
interpreter then times one ``lzc_snapshot`` of a scratch dataset per cycle (one sync task
each, the cheapest there is). Printed per tree, medians over all cycles: the
begin+commit, its sync tasks, read-only channel programs and mounts, and the ratio to
its floor (its sync tasks x the median single sync task of the same rounds).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = "dsgtest/ab-commit"
WORK = Path("/var/tmp/dsg-ab-commit")

_CYCLES = """
import collections, json, sys, time
from pathlib import Path
from dsg_storage import AllowList, Repository
from dsg_storage.zfs.boundary import Zfs

name, mountpoint, cycles, scratch = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
zfs = Zfs(AllowList([name.rsplit("/", 1)[0]]))
tally = collections.Counter()
program = zfs.program

def counted(pool, source, args, *, sync, **kwargs):
    tally["sync programs" if sync else "read programs"] += 1
    return program(pool, source, args, sync=sync, **kwargs)

zfs.program = counted
zfs.steps.observer = lambda step: tally.update([step.op])
repo = Repository(name, zfs=zfs)
if not repo.exists():
    repo.begin(mountpoint=mountpoint).commit("first")
tx = repo.begin()  # untimed: imports and caches warm
Path(tx.path, "f.txt").write_text("warm")
tx.commit()
took, counts = [], []
for n in range(cycles):
    tally.clear()
    syncs, start = zfs.steps.syncs, time.perf_counter()
    tx = repo.begin()
    Path(tx.path, "f.txt").write_text(str(n))
    tx.commit()
    took.append(time.perf_counter() - start)
    counts.append({"sync tasks": zfs.steps.syncs - syncs, **tally})
task = []
for n in range(cycles):
    start = time.perf_counter()
    zfs.lzc.lzc_snapshot([f"{scratch}@t{time.time_ns()}".encode()])
    task.append(time.perf_counter() - start)
print(json.dumps({"took": took, "counts": counts, "task": task}))
"""

COUNTS = ("sync tasks", "read programs", "mount", "unmount", "detach", "freeze")


def run_tree(tree: Path, name: str, cycles: int, scratch: str) -> dict[str, list]:  # type: ignore[type-arg]
    env = {**os.environ, "PYTHONPATH": f"{tree / 'src'}:{os.environ.get('PYTHONPATH', '')}"}
    mountpoint = WORK / "mnt" / name.rsplit("/", 1)[1]
    out = subprocess.run(
        [sys.executable, "-c", _CYCLES, name, str(mountpoint), str(cycles), scratch],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, list] = json.loads(out.splitlines()[-1])  # type: ignore[type-arg]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="a checkout whose src/ is the other tree")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cycles", type=int, default=5, help="timed begin+commit per round and tree")
    args = parser.parse_args()
    trees = {"before": args.before.resolve(), "after": Path(__file__).resolve().parents[1]}
    WORK.mkdir(parents=True, exist_ok=True)
    subprocess.run(["zfs", "destroy", "-r", ROOT], check=False, capture_output=True)
    subprocess.run(["zfs", "create", "-o", f"mountpoint={WORK / 'mnt'}", ROOT], check=True)
    subprocess.run(["zfs", "create", f"{ROOT}/scratch"], check=True)
    try:
        took: dict[str, list[float]] = {name: [] for name in trees}
        tasks: list[float] = []
        counts: dict[str, list[dict[str, int]]] = {name: [] for name in trees}
        for n in range(args.rounds):
            for name in ("before", "after") if n % 2 == 0 else ("after", "before"):
                result = run_tree(trees[name], f"{ROOT}/{name}", args.cycles, f"{ROOT}/scratch")
                took[name] += result["took"]
                counts[name] += result["counts"]
                tasks += result["task"]
            print(f"round {n + 1}: " + ", ".join(f"{k} {statistics.median(v) * 1000:.0f} ms" for k, v in took.items()))
        task = statistics.median(tasks)
        print(f"\none sync task (lzc_snapshot): median {task * 1000:.1f} ms of {len(tasks)}")
        print(
            f"{'tree':<8} {'begin+commit':>13} " + " ".join(f"{c:>13}" for c in COUNTS) + f" {'floor':>9} {'/floor':>7}"
        )
        for name in trees:
            median = statistics.median(took[name])
            per = {c: statistics.median(k.get(c, 0) for k in counts[name]) for c in COUNTS}
            floor = per["sync tasks"] * task
            cells = " ".join(f"{per[c]:>13g}" for c in COUNTS)
            print(f"{name:<8} {median * 1000:>10.0f} ms {cells} {floor * 1000:>6.0f} ms {median / floor:>6.2f}x")
        print(f"after/before: {statistics.median(took['after']) / statistics.median(took['before']):.3f}")
    finally:
        subprocess.run(["zfs", "destroy", "-r", ROOT], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
