#!/usr/bin/env python3
"""The userland reader against the kernel's read-only import and against zdb, side by side.

Run inside the VM (it needs real ZFS for the kernel path and for building the image):

    ./testpool/run python3 benchmarks/bench_userland.py                  # builds bench.img, 3 rounds
    ./testpool/run python3 benchmarks/bench_userland.py --rounds 5 --zdb-sample 20
    ./testpool/run python3 benchmarks/bench_userland.py --image /var/tmp/x/bench.img   # reuse one

One VM boot, one exported pool image (``testpool/userland_images.bench``: a repository
holding ``tree/`` with 3,000 small files in 30 directories and ``large.bin``, 512 MiB),
built on the guest's own disk under /var/tmp (never through the 9p share) and removed at
the end. Three ways to read it:

- **kernel**: ``open_offline`` (the pool imported read-only by the kernel, snapshots and
  heads mounted read-only at private directories), exported at close;
- **userland**: ``open_userland`` (libzpool in a helper process; in the guest, the
  host's own OpenZFS 2.3 userland that zfsutils-linux installed);
- **zdb**: one ``zdb -e -p IMAGE -r DATASET PATH OUT`` per file, as a user of zdb would:
  a sample of ``--zdb-sample`` small files, evenly spread, extrapolated to all 3,000
  (the table says so), and the large file once a round. zdb lists no directories.

Timed for each: open (find and import), listing the tree (``files``), reading every small
file (``read``), reading the large file (1 MiB at a time), close. The three run in turn
within a round, in an order that rotates from round to round; medians are printed, with
the ratios userland/kernel and zdb/userland. Before any timing, every answer is compared:
the listings and every byte must be equal through all three (zdb: its sample), or the
benchmark stops. That pass also warms the guest's page cache with the image, so every
timed read starts from the same place: the image in memory, no ZFS cache (each open is a
fresh import).

Peak memory: the caller's (VmHWM, reset before each way through /proc/self/clear_refs),
the helper's (its VmHWM just before close), zdb's (the largest ru_maxrss of its runs)
and, for the kernel, the ARC's size after the reads (kernel memory, in no process).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from testpool import userland_images

from dsg_storage.read.offline import open_offline
from dsg_storage.read.reader import Reader
from dsg_storage.read.userland import open_userland
from dsg_storage.read.userland.provision import locate

REPO = f"{userland_images.POOL}/bench"
LARGE = "large.bin"
CHUNK = 1 << 20
STEPS = ("open", "list tree", "read small files", f"read {LARGE}", "close")
WAYS = ("kernel", "userland", "zdb")


def log(text: str) -> None:
    print(f"[bench_userland {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ memory
def peak_kib(pid: int | str = "self") -> int:
    """VmHWM of a process: its peak resident set, KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def reset_peak() -> None:
    """Start the caller's VmHWM afresh (Linux 4.0+); harmless where refused."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def arc_kib() -> int:
    """The kernel ARC's current size, KiB (0 without ZFS's kstats)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/spl/kstat/zfs/arcstats").read_text().splitlines():
            parts = line.split()
            if parts[:1] == ["size"]:
                return int(parts[2]) // 1024
    return 0


# ------------------------------------------------------------------ one way through
@dataclass
class Run:
    """What one way through the image took (seconds) and used (KiB)."""

    times: dict[str, float] = field(default_factory=dict)
    memory: dict[str, int] = field(default_factory=dict)


@contextlib.contextmanager
def timed(run: Run, step: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    run.times[step] = time.perf_counter() - start


def read_large(reader: Reader, check: bool) -> int:
    """The large file's CRC-32 (check) or 0, read 1 MiB at a time."""
    crc = 0
    with reader.open(REPO, LARGE) as handle:
        while chunk := handle.read(CHUNK):
            if check:
                crc = zlib.crc32(chunk, crc)
    return crc


def through_reader(way: str, image: Path, small: list[str], *, check: bool = False) -> tuple[Run, object]:
    """Open, list, read everything and close through ``open_offline`` or ``open_userland``;
    returns the timings and (check) what was read, to compare."""
    run = Run()
    reset_peak()
    opener: Callable[[str], Reader] = open_offline if way == "kernel" else open_userland
    with timed(run, "open"):
        reader = opener(str(image))
    try:
        with timed(run, "list tree"):
            listing = reader.files(REPO, "tree")
        with timed(run, "read small files"):
            contents = [reader.read(REPO, path) for path in small]
        with timed(run, f"read {LARGE}"):
            crc = read_large(reader, check)
        if way == "userland":
            run.memory["helper"] = peak_kib(reader.helper.proc.pid)  # type: ignore[attr-defined]
        else:
            run.memory["kernel ARC"] = arc_kib()
    finally:
        with timed(run, "close"):
            reader.close()
    run.memory["caller"] = peak_kib()
    seen = (listing, [zlib.crc32(c) for c in contents], crc) if check else None
    return run, seen


def zdb_copy(zdb: list[str], image: Path, path: str, out: Path) -> tuple[float, int]:
    """One zdb run copying ``path`` out of the repository's head: (seconds, its peak KiB)."""
    argv = [*zdb, "-e", "-p", str(image), "-r", REPO, path, str(out)]
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)}: exit {proc.returncode}: {err.decode(errors='replace')[-2000:]}")
    return took, usage.ru_maxrss


def through_zdb(zdb: list[str], image: Path, sample: list[str], total: int, scratch: Path) -> tuple[Run, object]:
    """The sample of small files and the large file, one zdb each; small files extrapolated."""
    run, peaks, crcs = Run(), [], []
    took = 0.0
    for n, path in enumerate(sample):
        out = scratch / f"zdb-{n}"
        seconds, peak = zdb_copy(zdb, image, path, out)
        took += seconds
        peaks.append(peak)
        crcs.append(zlib.crc32(out.read_bytes()))
        out.unlink()
    run.times["read small files"] = took / len(sample) * total
    out = scratch / "zdb-large"
    run.times[f"read {LARGE}"], peak = zdb_copy(zdb, image, LARGE, out)
    peaks.append(peak)
    crc = 0
    with open(out, "rb") as handle:
        while chunk := handle.read(CHUNK):
            crc = zlib.crc32(chunk, crc)
    out.unlink()
    run.memory["zdb"] = max(peaks)
    return run, (crcs, crc)


# ------------------------------------------------------------------ the benchmark
def small_files(reader: Reader) -> list[str]:
    return [e.path for e in reader.files(REPO, "tree") if e.type == "file"]


def compare(image: Path, zdb: list[str], sample_size: int, scratch: Path) -> tuple[list[str], list[str]]:
    """Every answer equal through the three ways (zdb: its sample), else stop.
    Returns all small files and zdb's sample of them."""
    with open_offline(str(image)) as reader:
        small = small_files(reader)
    sample = [small[n * len(small) // sample_size] for n in range(sample_size)]
    log(f"checking answers: {len(small)} small files, zdb sample of {len(sample)}")
    _, kernel = through_reader("kernel", image, small, check=True)
    _, userland = through_reader("userland", image, small, check=True)
    if kernel != userland:
        raise SystemExit("the userland reader's answers differ from the kernel's: no timing is worth printing")
    _, from_zdb = through_zdb(zdb, image, sample, len(small), scratch)
    _, small_crcs, large_crc = kernel  # type: ignore[misc]
    expected = ([small_crcs[small.index(p)] for p in sample], large_crc)
    if from_zdb != expected:
        raise SystemExit("zdb's copies differ from the kernel's bytes")
    return small, sample


def rounds(
    image: Path, zdb: list[str], *, count: int, small: list[str], sample: list[str], scratch: Path
) -> dict[str, list[Run]]:
    runs: dict[str, list[Run]] = {way: [] for way in WAYS}
    for n in range(count):
        order = WAYS[n % 3 :] + WAYS[: n % 3]
        for way in order:
            log(f"round {n + 1}/{count}: {way}")
            if way == "zdb":
                run, _ = through_zdb(zdb, image, sample, len(small), scratch)
            else:
                run, _ = through_reader(way, image, small)
            runs[way].append(run)
    return runs


def median(runs: list[Run], step: str) -> float | None:
    values = [r.times[step] for r in runs if step in r.times]
    return statistics.median(values) if values else None


def cell(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f} s" if seconds >= 0.1 else f"{seconds * 1000:.0f} ms"


def ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}x"


def table(runs: dict[str, list[Run]], small: int, sample: int) -> str:
    names = {"read small files": f"read {small:,} small files"}
    lines = [f"{'step':<26} {'kernel':>10} {'userland':>10} {'zdb':>12} {'userland/kernel':>16} {'zdb/userland':>13}"]
    for step in STEPS:
        k, u, z = (median(runs[way], step) for way in WAYS)
        zdb = cell(z) + ("*" if step == "read small files" and z is not None else "")
        lines.append(
            f"{names.get(step, step):<26} {cell(k):>10} {cell(u):>10} {zdb:>12} {ratio(u, k):>16} {ratio(z, u):>13}"
        )
    whole = {way: sum(median(runs[way], s) or 0.0 for s in STEPS) for way in WAYS}
    lines.append(
        f"{'all of it':<26} {cell(whole['kernel']):>10} {cell(whole['userland']):>10} {cell(whole['zdb']):>12} "
        f"{ratio(whole['userland'], whole['kernel']):>16} {ratio(whole['zdb'], whole['userland']):>13}"
    )
    lines.append(f"* zdb: {sample} files copied (one zdb each), extrapolated to {small:,}; zdb lists no directories")
    lines.append("peak memory (largest of the rounds):")
    for way in WAYS:
        kinds = sorted({k for r in runs[way] for k in r.memory})
        shown = ", ".join(f"{k} {max(r.memory.get(k, 0) for r in runs[way]) / 1024:.0f} MiB" for k in kinds)
        lines.append(f"  {way:<9} {shown}")
    return "\n".join(lines)


def build(where: Path) -> Path:
    log(f"building bench.img under {where} (3,000 small files and {LARGE}, 512 MiB)")
    work = Path(tempfile.mkdtemp(dir=where))
    userland_images.bench(where, work)
    return where / "bench.img"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--zdb-sample", type=int, default=10, help="small files copied by zdb each round")
    parser.add_argument("--image", type=Path, help="an exported bench.img to read (default: build one)")
    args = parser.parse_args(argv)
    userland = locate(fetch=False)
    zdb = userland.zdb()
    log(f"OpenZFS userland: {userland.root or 'the host'}'s ({userland.libzpool}); zdb: {' '.join(zdb)}")
    scratch = Path(tempfile.mkdtemp(prefix="bench-userland-", dir="/var/tmp"))
    try:
        image = args.image or build(scratch)
        size = image.stat().st_blocks * 512
        small, sample = compare(image, zdb, args.zdb_sample, scratch)
        runs = rounds(image, zdb, count=args.rounds, small=small, sample=sample, scratch=scratch)
        with open_userland(str(image)) as reader:
            described = reader.describe()
        print(
            f"\n{image.name}: {size / 2**20:.0f} MiB of data; {len(small):,} small files in {REPO}/tree, "
            f"{LARGE} 512 MiB; {args.rounds} rounds, medians; the image in the page cache, every open a fresh import"
        )
        print(f"userland: {described}")
        print(table(runs, len(small), len(sample)), flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
