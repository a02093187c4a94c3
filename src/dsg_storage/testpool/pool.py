"""Create and destroy the file-backed ``dsgtest`` pool that the real-ZFS tests use.

Runs wherever ZFS runs (a Linux host with OpenZFS, or inside the test VM), as root.
Idempotent: ``create`` on an existing dsgtest pool backed by our file does nothing,
``destroy`` of a missing pool does nothing. It refuses to touch any other pool, and a
backing file that exists but does not hold a dsgtest pool is never overwritten.

It never imports a file it did not create (``backing``): the file lives in a directory
only root can change, and an existing one is imported only if it is a regular file of
root's, with one link, and holds the pool whose GUID the tool recorded when it created
it; then by that GUID and with ``-N`` (nothing is mounted). Anything else is refused,
naming the file to remove.

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

from . import backing as files

POOL = "dsgtest"
#: In a directory only root can change (created 0700): see ``backing``.
DEFAULT_FILE = "/var/lib/dsg-storage-testpool/dsgtest.img"
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


def read_label(fd: int) -> tuple[str | None, str | None]:
    """``(pool name, pool GUID)`` from the ZFS label of the open file ``fd``, each None if missing.

    zdb reads the very file that was checked, through ``/proc/self/fd/N``."""
    result = subprocess.run(
        [_zfs_tool("zdb"), "-l", f"/proc/self/fd/{fd}"], capture_output=True, text=True, check=False, pass_fds=(fd,)
    )
    name = re.search(r"^\s*name: '([^']+)'", result.stdout, re.MULTILINE)
    guid = re.search(r"^\s*pool_guid: ([0-9]+)$", result.stdout, re.MULTILINE)
    return (name.group(1) if name else None), (guid.group(1) if guid else None)


def _pool_guid() -> str:
    return _must("zpool", "get", "-H", "-p", "-o", "value", "guid", POOL).strip()


def _open_dir(path: Path, what: str, *, create: bool = True, mode: int = 0o700) -> int:
    """``backing.open_root_dir`` of ``path``, its refusal naming ``what`` the directory is for."""
    try:
        return files.open_root_dir(str(path), create=create, mode=mode)
    except files.UnsafeFileError as exc:
        raise files.UnsafeFileError(f"refusing {what}: {exc}") from None


def create(backing: Path, size: int, mount_base: Path) -> str:
    """Create the dsgtest pool on ``backing``, or import it again from there if this tool
    created it (see ``backing``): only by the GUID it recorded, and mounting nothing
    (``-N``). A file it did not create is refused, never imported or overwritten.

    After a crash: at worst a backing file without its GUID record is left, which the
    next call refuses, saying to remove it."""
    _check_environment()
    vdevs = imported_vdevs()
    if vdevs is not None and str(backing) in vdevs:
        return f"pool {POOL} already exists on {backing}"
    dirfd = _open_dir(backing.parent, f"backing file {backing}")
    try:
        image = files.open_image(dirfd, backing.name, str(backing))
        if image is not None:
            try:
                name, guid = read_label(image)
            finally:
                os.close(image)
            if name != POOL:
                raise PoolError(f"{backing} exists and does not hold a {POOL} pool: refusing to overwrite it")
            if vdevs is not None:
                raise PoolError(f"pool {POOL} is already imported from {', '.join(vdevs)}, not from {backing}")
            recorded = files.verdict(str(backing), guid, files.read_record(dirfd, backing.name, str(backing)), POOL)
            # -N: mount nothing; by GUID, from this one file: no other pool named dsgtest.
            _must("zpool", "import", "-N", "-d", str(backing), "-o", "cachefile=none", recorded, POOL)
            return f"pool {POOL} imported again from {backing} (GUID {recorded}, nothing mounted)"
        if vdevs is not None:
            raise PoolError(f"pool {POOL} is already imported from {', '.join(vdevs)}, not from {backing}")
        os.close(_open_dir(mount_base, f"mount base {mount_base}", mode=0o755))
        files.create_image(dirfd, backing.name, size)  # O_EXCL: never clobber a file that appeared meanwhile
        try:
            # cachefile=none: a file-backed pool must not be auto-imported at the next boot.
            _must("zpool", "create", "-o", "cachefile=none", "-m", str(mount_base), POOL, str(backing))
        except PoolError:
            files.remove(dirfd, backing.name)
            raise
        files.write_record(dirfd, backing.name, _pool_guid())
    finally:
        os.close(dirfd)
    return f"pool {POOL} created on {backing} ({size // 1024**2} MiB, mounted under {mount_base})"


def destroy(backing: Path, keep_file: bool) -> str:  # noqa: C901  refuses what is not provably ours, as one rule
    """Destroy the dsgtest pool if it is imported from ``backing``, and remove the file
    (unless ``keep_file``) and its GUID record. A file that does not hold a dsgtest pool,
    or that this tool cannot have created, is left alone."""
    _check_environment()
    vdevs = imported_vdevs()
    ours_imported = vdevs is not None and str(backing) in vdevs
    try:
        dirfd = _open_dir(backing.parent, f"backing file {backing}", create=False)
    except FileNotFoundError:
        dirfd = -1
    except files.UnsafeFileError as exc:
        if not ours_imported:
            raise
        # Imported from an unsafe place (an older version used /var/tmp/dsgtest.img): the
        # pool goes, the file stays: removing it would act on a path others can change.
        _must("zpool", "destroy", "-f", POOL)
        return f"pool {POOL} destroyed; {backing} left in place ({exc}): remove it yourself"
    try:
        image = files.open_image(dirfd, backing.name, str(backing)) if dirfd >= 0 else None
        if image is not None:
            try:
                name = None if ours_imported else read_label(image)[0]
            finally:
                os.close(image)
            if not ours_imported and name != POOL:
                raise PoolError(f"{backing} does not hold a {POOL} pool: refusing to delete it")
        if vdevs is not None and not ours_imported:
            raise PoolError(f"pool {POOL} is imported from {', '.join(vdevs)}, not from {backing}: not destroying it")
        if ours_imported:
            _must("zpool", "destroy", "-f", POOL)
        if dirfd < 0:
            return f"pool {POOL} destroyed" if ours_imported else f"pool {POOL} does not exist"
        files.remove(dirfd, backing.name + files.RECORD_SUFFIX)  # the file holds no importable pool now
        if image is not None and not keep_file:
            files.remove(dirfd, backing.name)
            return f"pool {POOL} destroyed and {backing} removed"
    finally:
        if dirfd >= 0:
            os.close(dirfd)
    return f"pool {POOL} destroyed" if ours_imported else f"pool {POOL} does not exist"


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
        backing = Path(os.path.abspath(args.file))  # links are not followed: see backing.open_root_dir
        if args.action == "create":
            print(create(backing, parse_size(args.size), args.mount_base))
        elif args.action == "destroy":
            print(destroy(backing, args.keep_file))
        else:
            _check_environment()
            vdevs = imported_vdevs()
            print(f"pool {POOL} imported from {', '.join(vdevs)}" if vdevs else f"pool {POOL} is not imported")
    except (PoolError, files.UnsafeFileError, OSError) as exc:  # OSError: e.g. a read-only /var/lib
        print(f"testpool: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
