#!/usr/bin/env python3
"""HRDAG/dsg's own ``ZFSOperations`` against our drop-in and ``Repository``, side by side.

    ./testpool/run --deps benchmarks/dsg-requirements.txt \\
        python3 benchmarks/bench_dsg.py --dsg DSG_CHECKOUT [--runs 15]

``DSG_CHECKOUT``: a checkout of https://github.com/HRDAG/dsg inside this checkout (the VM
sees only this one), e.g. ``git clone https://github.com/HRDAG/dsg .bench/dsg``. Of dsg,
``dsg.storage.snapshots`` and ``dsg.system.execution`` are loaded and run unchanged; the
``dsg.storage`` package's ``__init__`` is not run (it imports the rest of dsg, whose
dependencies the comparison does not need: ``dsg-requirements.txt`` names the one left).
dsg runs every command through ``sudo``; where ``sudo`` is missing (the test VM), a
stand-in that only execs its arguments is put first on ``PATH``, cheaper than sudo
itself, so dsg's figures are if anything too low. dsg's debug log lines are dropped (its
command line sets a level), as ours are.

All three in one interpreter (one untimed round of each first), interleaved per round,
on the inherited layout (repositories under a parent whose mountpoint gives theirs),
each round on fresh repositories: init begin + commit, sync begin + commit, then sync
begin + rollback, one small file written after each begin (not timed). Printed: medians
per call and per operation, dsg's over ours, and what ours cost per operation (sync
tasks, read-only channel programs, mounts, unmounts).
"""

from __future__ import annotations

import argparse
import collections
import importlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dsg_storage import AllowList, Repository
from dsg_storage.compat.dsg import ZFSOperations as DropIn
from dsg_storage.zfs.boundary import Zfs

POOL = "dsgtest"
PARENT = f"{POOL}/bench-dsg"
OPERATIONS = {"init": ("begin", "commit"), "sync": ("begin", "commit"), "rollback": ("begin", "rollback")}
WAYS = ("dsg", "drop-in", "Repository")
COUNTED = ("sync tasks", "read programs", "mount", "unmount", "detach")


def zfs(*args: str) -> str:
    return subprocess.run(["zfs", *args], check=True, capture_output=True, text=True).stdout


def load_dsg(checkout: Path) -> type:
    """dsg's ``ZFSOperations``, its module and what it imports run from ``checkout``."""
    src = checkout.resolve() / "src"
    if not (src / "dsg" / "storage" / "snapshots.py").is_file():
        raise SystemExit(f"{checkout} is not a checkout of HRDAG/dsg (no src/dsg/storage/snapshots.py)")
    sys.path.insert(0, str(src))
    # The package without its __init__: only its path, so that the submodule loads.
    storage = types.ModuleType("dsg.storage")
    storage.__path__ = [str(src / "dsg" / "storage")]
    sys.modules["dsg.storage"] = storage
    try:
        module = importlib.import_module("dsg.storage.snapshots")
    except ImportError as exc:
        raise SystemExit(f"dsg's ZFS module does not load ({exc}): run with --deps benchmarks/dsg-requirements.txt")
    from loguru import logger  # type: ignore[import-not-found]  # dsg's: debug lines to stderr by default

    logger.remove()
    cls: type = module.ZFSOperations
    return cls


def sudo_on_path(scratch: Path) -> str:
    """Which ``sudo`` dsg's commands go through (a stand-in where there is none)."""
    found = shutil.which("sudo")
    if found:
        return found
    stand_in = scratch / "sudo"
    stand_in.write_text('#!/bin/sh\nexec "$@"\n')
    stand_in.chmod(0o755)
    os.environ["PATH"] = f"{scratch}:{os.environ['PATH']}"
    return f"{stand_in} (a stand-in: exec of its arguments)"


class Tally:
    """What one call cost through ``engine``: sync tasks, read programs, mounts."""

    def __init__(self, engine: Zfs) -> None:
        self.engine = engine
        self.counts: collections.Counter[str] = collections.Counter()
        program = engine.program

        def counted(pool: str, source: str, args: Any, *, sync: bool, **kwargs: Any) -> Any:
            self.counts["read programs" if not sync else "sync programs"] += 1
            return program(pool, source, args, sync=sync, **kwargs)

        engine.program = counted  # type: ignore[method-assign]
        engine.steps.observer = lambda step: self.counts.update([step.op])

    def __call__(self, fn: Callable[[], Any]) -> tuple[Any, float, dict[str, int]]:
        self.counts.clear()
        syncs, started = self.engine.steps.syncs, time.perf_counter()
        result = fn()
        took = (time.perf_counter() - started) * 1000
        return result, took, {**self.counts, "sync tasks": self.engine.steps.syncs - syncs}


class Round:
    """One round: the three operations of each way on fresh repositories."""

    def __init__(self, dsg_class: type, base: str, engines: dict[str, Tally]) -> None:
        self.dsg_class = dsg_class
        self.base = base
        self.engines = engines

    def way(self, way: str, n: int) -> dict[str, list[tuple[float, dict[str, int]]]]:
        leaf = f"{way.lower().replace('-', '')}{n}"
        mount = f"{self.base}/{leaf}"
        if way == "dsg":
            ops = self.dsg_class(POOL, leaf, mount)
            calls = self._dsg_calls(ops, n)
            tally: Callable[[Callable[[], Any]], tuple[Any, float, dict[str, int]]] = _untallied
        elif way == "drop-in":
            engine = self.engines[way]
            ops = DropIn(POOL, leaf, mount, zfs=engine.engine)
            calls = self._dsg_calls(ops, n)
            tally = engine
        else:
            engine = self.engines[way]
            calls = self._repository_calls(Repository(f"{PARENT}/{leaf}", zfs=engine.engine), mount)
            tally = engine
        times: dict[str, list[tuple[float, dict[str, int]]]] = {}
        for operation, steps in calls.items():
            times[operation] = []
            for step, fn in steps:
                result, took, counts = tally(fn)
                times[operation].append((took, counts))
                if step == "begin":
                    Path(result, "file.txt").write_text(f"{way} {operation} {n}\n")
        return times

    @staticmethod
    def _dsg_calls(ops: Any, n: int) -> dict[str, list[tuple[str, Callable[[], Any]]]]:
        def call(step: str, tx: str) -> Callable[[], Any]:
            return lambda: getattr(ops, step)(tx)

        return {
            operation: [(step, call(step, f"{operation}-{n}")) for step in steps]
            for operation, steps in OPERATIONS.items()
        }

    @staticmethod
    def _repository_calls(repo: Repository, mount: str) -> dict[str, list[tuple[str, Callable[[], Any]]]]:
        open_tx: list[Any] = []

        def begin(**kwargs: Any) -> str:
            open_tx[:] = [repo.begin(**kwargs)]
            return str(open_tx[0].path)

        return {
            "init": [("begin", lambda: begin(mountpoint=mount)), ("commit", lambda: open_tx[0].commit())],
            "sync": [("begin", begin), ("commit", lambda: open_tx[0].commit())],
            "rollback": [("begin", begin), ("rollback", lambda: open_tx[0].rollback())],
        }


def _untallied(fn: Callable[[], Any]) -> tuple[Any, float, dict[str, int]]:
    started = time.perf_counter()
    result = fn()
    return result, (time.perf_counter() - started) * 1000, {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsg", type=Path, required=True, help="a checkout of HRDAG/dsg inside this checkout")
    parser.add_argument("--runs", type=int, default=15, help="timed rounds (default 15)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs takes at least 1")
    dsg_class = load_dsg(args.dsg)
    pool_mountpoint = zfs("get", "-H", "-o", "value", "mountpoint", POOL).strip()
    base = f"{pool_mountpoint}/bench-dsg"
    subprocess.run(["zfs", "destroy", "-r", PARENT], check=False, capture_output=True)
    zfs("create", PARENT)  # mounted at base, inherited: the repositories' paths below it
    engines = {way: Tally(Zfs(AllowList((PARENT,)))) for way in WAYS[1:]}
    samples: dict[str, dict[str, list[tuple[float, dict[str, int]]]]] = {way: {} for way in WAYS}
    with tempfile.TemporaryDirectory() as scratch:
        print(f"sudo for dsg's commands: {sudo_on_path(Path(scratch))}")
        bench = Round(dsg_class, base, engines)
        try:
            for way in WAYS:
                bench.way(way, 0)  # untimed: imports, libzfs_core, caches
            for n in range(1, args.runs + 1):
                order = WAYS if n % 2 else WAYS[::-1]  # interleaved: drift hits every way alike
                for way in order:
                    for operation, calls in bench.way(way, n).items():
                        for index, call in enumerate(calls):
                            samples[way].setdefault(f"{operation} {OPERATIONS[operation][index]}", []).append(call)
                print(f"round {n}/{args.runs} done", flush=True)
        finally:
            subprocess.run(["zfs", "destroy", "-r", PARENT], check=False, capture_output=True)
    report(samples, args.runs)
    return 0


def report(samples: dict[str, dict[str, list[tuple[float, dict[str, int]]]]], runs: int) -> None:
    def median(way: str, keys: list[str]) -> float:
        return statistics.median(sum(samples[way][k][i][0] for k in keys) for i in range(runs))

    rows: list[tuple[str, list[str]]] = []
    for operation, steps in OPERATIONS.items():
        keys = [f"{operation} {step}" for step in steps]
        rows += [(key, [key]) for key in keys]
        rows.append((f"{operation}: {' + '.join(steps)}", keys))
    print(f"\nmedians of {runs} rounds, ms (inherited layout; one small file per transaction, not timed)")
    print(
        f"{'':<26}{'dsg':>9}{'drop-in':>9}{'Repository':>11}{'dsg/drop-in':>13}{'dsg/Repository':>16}   ours per call"
    )
    for label, keys in rows:
        dsg, drop_in, repo = (median(way, keys) for way in WAYS)
        costs = []
        for way in WAYS[1:]:
            counts = [collections.Counter[str]() for _ in range(runs)]
            for i, count in enumerate(counts):
                for k in keys:
                    count.update(samples[way][k][i][1])
            per = {c: statistics.median(count.get(c, 0) for count in counts) for c in COUNTED}
            costs.append("/".join(f"{per[c]:g}" for c in COUNTED))
        print(
            f"{label:<26}{dsg:>9.1f}{drop_in:>9.1f}{repo:>11.1f}{dsg / drop_in:>12.2f}x{dsg / repo:>15.2f}x"
            f"   {costs[0]} | {costs[1]}"
        )
    print(f"ours per call: drop-in | Repository, each {' / '.join(COUNTED)}")


if __name__ == "__main__":
    sys.exit(main())
