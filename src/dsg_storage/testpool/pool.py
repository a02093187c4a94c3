"""Create and destroy the file-backed ``dsgtest`` pool that the real-ZFS tests use.

Runs wherever ZFS runs (a Linux host with OpenZFS, or inside the test VM), as root.
Idempotent: ``create`` on an existing dsgtest pool backed by our file does nothing,
``destroy`` of a missing pool does nothing. It refuses to touch any other pool, and a
backing file that exists but does not hold a dsgtest pool is never overwritten.

    dsg-storage-testpool pool create  [--file F] [--size 1G] [--mount-base DIR]
    dsg-storage-testpool pool destroy [--file F] [--keep-file]
    dsg-storage-testpool pool status

(also ``python3 -m dsg_storage.testpool.pool ...``).

Defaults come from DSG_TESTPOOL_FILE, DSG_TESTPOOL_SIZE and DSG_TESTPOOL_MOUNT_BASE.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

POOL = "dsgtest"
DEFAULT_FILE = "/var/tmp/dsgtest.img"
DEFAULT_SIZE = "1G"
DEFAULT_MOUNT_BASE = "/var/tmp/dsgtest"
_SIZE_RE = re.compile(r"([0-9]+)([KMGT]?)", re.IGNORECASE)


class PoolError(RuntimeError):
    """The dsgtest pool cannot be created, found or destroyed as asked."""


def parse_size(text: str) -> int:
    match = _SIZE_RE.fullmatch(text.strip())
    if not match:
        raise PoolError(f"size {text!r} is not a number with an optional K/M/G/T suffix")
    number, unit = int(match.group(1)), match.group(2).upper()
    size = number << (10 * " KMGT".index(unit or " "))
    if size < 64 * 1024**2:
        raise PoolError(f"size {text!r} is below 64M, the smallest pool ZFS creates")
    return size


def _zfs_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise PoolError(
            f"'{name}' not found: ZFS is not installed here (use 'dsg-storage-testpool run', which brings a VM)"
        )
    return path


def _check_environment() -> None:
    if os.geteuid() != 0:
        raise PoolError("managing the dsgtest pool needs root")
    _zfs_tool("zpool")
    if not Path("/dev/zfs").exists():
        raise PoolError("/dev/zfs is missing: the zfs kernel module is not loaded (modprobe zfs)")


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def _must(*argv: str) -> str:
    result = _run(*argv)
    if result.returncode != 0:
        raise PoolError(f"{' '.join(argv)} failed: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def imported_vdevs() -> list[str] | None:
    """Backing paths of the imported dsgtest pool, or None when it is not imported."""
    result = _run(_zfs_tool("zpool"), "list", "-H", "-P", "-v", "-o", "name", POOL)
    if result.returncode != 0:
        return None
    return [line.split("\t")[1] for line in result.stdout.splitlines() if line.startswith("\t") and "/" in line]


def label_pool_name(backing: Path) -> str | None:
    """The pool name written in the ZFS label of ``backing``, if it has one."""
    result = _run(_zfs_tool("zdb"), "-l", str(backing))
    match = re.search(r"^\s*name: '([^']+)'", result.stdout, re.MULTILINE)
    return match.group(1) if match else None


def create(backing: Path, size: int, mount_base: Path) -> str:
    _check_environment()
    vdevs = imported_vdevs()
    if vdevs is not None and str(backing) in vdevs:
        return f"pool {POOL} already exists on {backing}"
    if backing.exists() and label_pool_name(backing) != POOL:
        raise PoolError(f"{backing} exists and does not hold a {POOL} pool: refusing to overwrite it")
    if vdevs is not None:
        raise PoolError(f"pool {POOL} is already imported from {', '.join(vdevs)}, not from {backing}")
    if backing.exists():
        _must("zpool", "import", "-d", str(backing), "-o", "cachefile=none", POOL)
        return f"pool {POOL} imported again from {backing}"
    backing.parent.mkdir(parents=True, exist_ok=True)
    mount_base.mkdir(parents=True, exist_ok=True)
    with open(backing, "xb") as handle:  # "x": never clobber a file that appeared meanwhile
        handle.truncate(size)  # sparse
    try:
        # cachefile=none: a file-backed pool must not be auto-imported at the next boot.
        _must("zpool", "create", "-o", "cachefile=none", "-m", str(mount_base), POOL, str(backing))
    except PoolError:
        backing.unlink()
        raise
    return f"pool {POOL} created on {backing} ({size // 1024**2} MiB, mounted under {mount_base})"


def destroy(backing: Path, keep_file: bool) -> str:
    _check_environment()
    vdevs = imported_vdevs()
    ours_imported = vdevs is not None and str(backing) in vdevs
    if not ours_imported and backing.exists() and label_pool_name(backing) != POOL:
        raise PoolError(f"{backing} does not hold a {POOL} pool: refusing to delete it")
    if vdevs is not None and not ours_imported:
        raise PoolError(f"pool {POOL} is imported from {', '.join(vdevs)}, not from {backing}: not destroying it")
    if ours_imported:
        _must("zpool", "destroy", "-f", POOL)
    if backing.exists() and not keep_file:
        backing.unlink()
        return f"pool {POOL} destroyed and {backing} removed"
    return f"pool {POOL} destroyed" if vdevs is not None else f"pool {POOL} does not exist"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("create", "destroy", "status"))
    parser.add_argument("--pool", default=POOL, help=f"must be {POOL}: this tool manages no other pool")
    parser.add_argument("--file", type=Path, default=Path(os.environ.get("DSG_TESTPOOL_FILE", DEFAULT_FILE)))
    parser.add_argument("--size", default=os.environ.get("DSG_TESTPOOL_SIZE", DEFAULT_SIZE))
    parser.add_argument(
        "--mount-base", type=Path, default=Path(os.environ.get("DSG_TESTPOOL_MOUNT_BASE", DEFAULT_MOUNT_BASE))
    )
    parser.add_argument("--keep-file", action="store_true", help="destroy: keep the backing file")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    try:
        if args.pool != POOL:
            raise PoolError(f"refusing pool {args.pool!r}: testpool only manages the {POOL!r} pool")
        backing = args.file.resolve()
        if args.action == "create":
            print(create(backing, parse_size(args.size), args.mount_base))
        elif args.action == "destroy":
            print(destroy(backing, args.keep_file))
        else:
            _check_environment()
            vdevs = imported_vdevs()
            print(f"pool {POOL} imported from {', '.join(vdevs)}" if vdevs else f"pool {POOL} is not imported")
    except PoolError as exc:
        print(f"testpool: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
