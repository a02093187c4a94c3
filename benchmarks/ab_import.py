#!/usr/bin/env python3
"""Bundle import of two source trees side by side, with ``zfs receive < file`` between:
the fair before/after comparison on a machine whose load drifts (every round runs the
three within a minute, on the same bundle, the pool synced between them, untimed, so
that none pays for the writeback of the one before).

    ./testpool/run python3 benchmarks/ab_import.py --before OLD_CHECKOUT [--size-mib 1024] [--random] [--rounds 5]

``OLD_CHECKOUT`` holds the other tree's ``src/`` (``git archive COMMIT src | tar -x -C DIR``);
the bundle is exported once with this tree (the format is the same). Each import runs in
a fresh interpreter with that tree on ``PYTHONPATH`` and times ``import_bundle`` alone
(not the interpreter's start nor loading libzfs_core: the plain receive's time includes
none of ours).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_bundles import data_repository, grow_pool

from dsg_storage.transfer.export import export_bundle

ROOT = "dsgtest/ab-import"
WORK = Path("/var/tmp/dsg-ab-import")
MiB = 1 << 20
# libzfs_core is loaded before the clock starts (0.7-1.1 s to import under emulation), as
# in bench_bundles.py, where the export before has loaded it.
_IMPORT = """
import sys, time
from dsg_storage.transfer.importing import import_bundle
from dsg_storage.zfs.boundary import open_zfs
zfs = open_zfs(sys.argv[4])
start = time.perf_counter()
import_bundle(sys.argv[1], sys.argv[2], mountpoint=sys.argv[3], zfs=zfs)
print(time.perf_counter() - start)
"""


def import_seconds(tree: Path, bundle: Path, into: str, mountpoint: Path) -> float:
    env = {**os.environ, "PYTHONPATH": f"{tree / 'src'}:{os.environ.get('PYTHONPATH', '')}"}
    out = subprocess.run(
        [sys.executable, "-c", _IMPORT, str(bundle), into, str(mountpoint), ROOT],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    settle(into)
    return float(out.split()[-1])


def settle(dataset: str) -> None:
    """Destroy ``dataset`` and sync the pool, untimed: what one step wrote or freed is not
    written out during the next one's time."""
    subprocess.run(["zfs", "destroy", "-r", dataset], check=True)
    subprocess.run(["zpool", "sync", ROOT.split("/")[0]], check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="a checkout whose src/ is the other tree")
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--random", action="store_true", help="incompressible data (default: patterned)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    trees = {"before": args.before.resolve(), "after": Path(__file__).resolve().parents[1]}
    WORK.mkdir(parents=True, exist_ok=True)
    grow_pool(2 * args.size_mib)
    subprocess.run(["zfs", "create", "-o", "compression=lz4", "-o", f"mountpoint={WORK / 'mnt'}", ROOT], check=True)
    try:
        repo = data_repository(f"{ROOT}/src", WORK / "mnt" / "src", args.size_mib, compressible=not args.random)
        bundle, raw = WORK / "b.dsgb", WORK / "raw.zstream"
        export_bundle(repo.name, bundle)
        with open(raw, "wb") as handle:
            subprocess.run(["zfs", "send", repo.history()[-1].snapshot], stdout=handle, check=True)
        subprocess.run(["sync"], check=True)
        size = raw.stat().st_size / MiB
        times: dict[str, list[float]] = {"plain": [], "before": [], "after": []}
        for n in range(args.rounds):
            with open(raw, "rb") as handle:
                start = time.perf_counter()
                subprocess.run(["zfs", "receive", f"{ROOT}/plain"], stdin=handle, check=True)
                times["plain"].append(time.perf_counter() - start)
            settle(f"{ROOT}/plain")
            for name in ("before", "after") if n % 2 == 0 else ("after", "before"):
                times[name].append(import_seconds(trees[name], bundle, f"{ROOT}/{name}", WORK / name))
            print(f"round {n + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)
        plain = statistics.median(times["plain"])
        kind = "random" if args.random else "patterned"
        print(f"{kind}, {size:,.0f} MiB stream, median of {args.rounds}: zfs receive < file {size / plain:.1f} MiB/s")
        for name in ("before", "after"):
            took = statistics.median(times[name])
            print(f"  import {name:6} {size / took:7.1f} MiB/s  {plain / took:.2f}x of zfs receive < file")
    finally:
        subprocess.run(["zfs", "destroy", "-r", ROOT], check=False)
        for leftover in (WORK / "b.dsgb", WORK / "raw.zstream"):
            leftover.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
