#!/usr/bin/env python3
"""Bundle export/import vs plain ``zfs send > file`` / ``zfs receive < file``, and the
peak memory of exporting and importing a large bundle.

Run against real ZFS (inside the VM when this machine has none):

    ./testpool/run python3 benchmarks/bench_bundles.py [--random-mib 512] [--size-mib 1024] [--rounds 2]

Baselines: each side alone (``zfs send > file``, ``zfs receive < file``: the strict
comparison, since ours also writes or reads a file) and the pipeline the issue names
(``zfs send | zfs receive``, the transfer a bundle replaces). Two cases, each a repository with one commit exported both ways, interleaved,
``--rounds`` times, each result then imported both ways into a new dataset:
``random`` (incompressible, 512 MiB: what fits the VM's disk twice over) and
``patterned`` (1 GiB repeating a random 4 KiB block, which lz4 stores in ~1/30 of its
size; the streams, sent uncompressed, are the full 1 GiB). Receiving compressible data
is cheap for ZFS, so that case shows the verification pass at its most visible. Throughput is stream bytes per second; the ratio ours/plain is printed (target
>= 0.8). Our import includes its verification: every byte checked before the commit
point, the records before anything changes, the stream bytes while ZFS receives them
(docs/archive/0006-bundles.md). A summary at the end puts both cases side by side.
Peak memory is the maximum resident set size of a ``dsg-storage bundle
export`` / ``bundle import`` process (a whole Python interpreter included), taken from
wait4(2).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import attrs

from dsg_storage import Repository
from dsg_storage.transfer.export import export_bundle
from dsg_storage.transfer.importing import import_bundle

ROOT = "dsgtest/bench-bundles"
WORK = Path("/var/tmp/dsg-bench-bundles")
MiB = 1 << 20


def run(*args: str, stdin: object = None, stdout: object = None) -> None:
    subprocess.run(args, check=True, stdin=stdin, stdout=stdout)  # type: ignore[arg-type]


def run_to(path: Path, *args: str) -> None:
    with open(path, "wb") as handle:
        run(*args, stdout=handle)


def timed(fn: object) -> float:
    started = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - started


# Runs the command line in a fresh interpreter and reports VmHWM, the peak RSS of this
# process image (wait4's ru_maxrss would include the benchmark's own RSS from before exec).
_MEASURE = """
import sys
from dsg_storage.cli import main
rc = main(sys.argv[1:]) if sys.argv[1:] else 0
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:")).split()[1]
print("VmHWM", hwm, flush=True)
sys.exit(rc)
"""


def peak_rss_mib(args: list[str]) -> float:
    """Peak resident set size, in MiB, of ``dsg-storage ARGS`` (no ARGS: imports alone)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE, *args], env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise SystemExit(f"dsg-storage {' '.join(args)} failed: {result.stderr.strip()}")
    return int(result.stdout.split()[-1]) / 1024


def grow_pool(needed_mib: int) -> None:
    """Grow dsgtest's file-backed pool when the data will not fit (zpool online -e)."""
    pool_file = Path(os.environ.get("DSG_TESTPOOL_FILE", "/var/tmp/dsgtest.img"))
    wanted = (needed_mib + 512) * MiB
    if pool_file.is_file() and pool_file.stat().st_size < wanted:
        os.truncate(pool_file, wanted)
        run("zpool", "online", "-e", "dsgtest", str(pool_file))


def data_repository(name: str, mountpoint: Path, size_mib: int, *, compressible: bool) -> Repository:
    """A new repository holding one file of ``size_mib`` MiB: random bytes, or (compressible)
    1 MiB blocks repeating a random 4 KiB, which lz4 stores in ~1/30 of their size."""
    repo = Repository(name, allow=name.rsplit("/", 1)[0])
    with repo.begin(mountpoint=str(mountpoint)) as tx, open(Path(tx.path, "data.bin"), "wb") as out:
        block = os.urandom(4096) * 256 if compressible else b""
        out.writelines(block or os.urandom(MiB) for _ in range(size_mib))
    return repo


@attrs.frozen
class Rates:
    """One case's medians, stream MiB/s."""

    case: str
    stream_mib: float
    send: float
    export: float
    receive: float
    imported: float
    piped: float


def measure(name: str, size_mib: int, rounds: int, compressible: bool) -> tuple[Repository, Path, Rates]:
    """Export and import both ways, interleaved; print the throughput table."""
    repo = data_repository(f"{ROOT}/{name}", WORK / "mnt" / name, size_mib, compressible=compressible)
    snap = repo.history()[-1].snapshot
    bundle, raw = WORK / f"{name}.dsgb", WORK / "raw.zstream"
    ours_out, plain_out, ours_in, plain_in, piped = [], [], [], [], []
    size = 0
    for n in range(rounds):
        # Exports side by side, alternating which goes first; then the imports.
        plain_send = lambda: run_to(raw, "zfs", "send", snap)
        ours_send = lambda: export_bundle(repo.name, bundle)
        first, second = (plain_send, ours_send) if n % 2 == 0 else (ours_send, plain_send)
        times = {first: timed(first), second: timed(second)}
        plain_out.append(times[plain_send])
        ours_out.append(times[ours_send])
        size = raw.stat().st_size
        with open(raw, "rb") as handle:
            plain_in.append(timed(lambda h=handle, n=n: run("zfs", "receive", f"{ROOT}/plain{n}", stdin=h)))
        raw.unlink()
        run("zfs", "destroy", "-r", f"{ROOT}/plain{n}")
        ours_in.append(
            timed(lambda n=n: import_bundle(bundle, f"{ROOT}/ours{n}", mountpoint=str(WORK / f"o{n}"), allow=ROOT))
        )
        run("zfs", "destroy", "-r", f"{ROOT}/ours{n}")
        piped.append(timed(lambda n=n: run("sh", "-c", f"zfs send {snap} | zfs receive {ROOT}/pipe{n}")))
        run("zfs", "destroy", "-r", f"{ROOT}/pipe{n}")

    def rate(times: list[float]) -> float:
        return size / MiB / statistics.median(times)

    kind = "compressible (lz4 ~30x on disk)" if compressible else "incompressible (random)"
    print(f"{name}: {size / MiB:,.0f} MiB stream, {kind}, median of {rounds}", flush=True)
    print(f"  {'':8} {'plain MiB/s':>12} {'ours MiB/s':>11} {'ours/plain':>11}")
    for what, plain, ours in (("export", plain_out, ours_out), ("import", plain_in, ours_in)):
        print(f"  {what:8} {rate(plain):12.1f} {rate(ours):11.1f} {rate(ours) / rate(plain):11.2f}", flush=True)
    pipe = rate(piped)
    both = size / MiB / (statistics.median(ours_out) + statistics.median(ours_in))
    print(
        f"  vs 'zfs send | zfs receive' ({pipe:.1f} MiB/s): export {rate(ours_out) / pipe:.2f}, "
        f"import {rate(ours_in) / pipe:.2f}, export then import {both / pipe:.2f}",
        flush=True,
    )
    rates = Rates(kind, size / MiB, rate(plain_out), rate(ours_out), rate(plain_in), rate(ours_in), pipe)
    return repo, bundle, rates


def summary(cases: list[Rates], peak: str) -> None:
    """Both cases side by side: what the issue's targets (>= 0.8x) are about."""
    print(f"\nsummary (medians, stream MiB/s; {peak})", flush=True)
    print(
        f"  {'case':32} {'send>file':>10} {'export':>8} {'ratio':>6}"
        f" {'receive<file':>13} {'import':>8} {'ratio':>6} {'send|recv':>10}"
    )
    for c in cases:
        print(
            f"  {c.case:32} {c.send:10.1f} {c.export:8.1f} {c.export / c.send:6.2f}"
            f" {c.receive:13.1f} {c.imported:8.1f} {c.imported / c.receive:6.2f} {c.piped:10.1f}",
            flush=True,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--random-mib", type=int, default=512, help="size of the incompressible case")
    parser.add_argument("--size-mib", type=int, default=1024, help="size of the compressible case (memory too)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    grow_pool(2 * args.random_mib)
    run("zfs", "create", "-o", "compression=lz4", "-o", f"mountpoint={WORK / 'mnt'}", ROOT)
    try:
        # The compressible case first: its pool needs little disk, and the VM's disk must
        # hold the pool's file, one plain stream and one bundle at a time.
        repo, bundle, patterned = measure("patterned", args.size_mib, args.rounds, compressible=True)
        cli = ["--allow", ROOT]
        export_peak = peak_rss_mib([*cli, "bundle", "export", repo.name, "-o", str(bundle)])
        import_peak = peak_rss_mib(
            [*cli, "bundle", "import", str(bundle), "--into", f"{ROOT}/mem", "--mountpoint", str(WORK / "mem")]
        )
        baseline = peak_rss_mib([])
        peak = (
            f"peak RSS, {bundle.stat().st_size / MiB:,.0f} MiB bundle: export {export_peak:.1f} MiB, "
            f"import {import_peak:.1f} MiB (interpreter and imports alone: {baseline:.1f} MiB; target < 100 MiB)"
        )
        print(peak, flush=True)
        bundle.unlink()
        run("zfs", "destroy", "-r", repo.name)
        run("zfs", "destroy", "-r", f"{ROOT}/mem")
        random_rates = measure("random", args.random_mib, args.rounds, compressible=False)[2]
        summary([patterned, random_rates], peak)
    finally:
        subprocess.run(["zfs", "destroy", "-r", ROOT], check=False)
        for leftover in WORK.glob("*.dsgb"):
            leftover.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
