"""``dsg-storage-testpool``: run any project's command against real ZFS.

    dsg-storage-testpool run [--vm | --local] [--silence-timeout S] [--timeout S] [--pool-size SIZE]
                             [--deps REQUIREMENTS]... [--] CMD...
    dsg-storage-testpool build | path
    dsg-storage-testpool deps REQUIREMENTS...
    dsg-storage-testpool pool create | destroy | status [...]

``run`` works from the root of any checkout (the current directory): it creates the
``dsgtest`` pool and runs CMD there, with ``src/`` on PYTHONPATH; its exit code is CMD's.
Directly on this machine when /dev/zfs exists and we are root; otherwise inside a qemu VM
with real ZFS, whose image is built on first use (as root) and cached in
``~/.cache/dsg-storage/vm`` (``$DSG_VM_CACHE``). Host tools the VM needs are installed
when we are root on Debian/Ubuntu, otherwise named with the command that installs them.

``--pool-size SIZE`` (default 1G) is the size of the pool it creates. In the VM the pool's
file then lives on a disk of its own, a sparse file on this machine as big as the pool
(plus ~10%) beside the image cache, gone when the run ends: the image's own disk has only
~3 GB free. Locally, a dsgtest pool that already exists is used as it is, whatever its
size.

``--deps FILE`` (a pip requirements file, repeatable) brings the project's Python
dependencies into the guest, which has no network: pip on the host fetches binary wheels
for the guest's CPython 3.13 into a cached directory the guest puts on PYTHONPATH.

The VM is killed when it printed nothing for ``--silence-timeout`` seconds (default
1200: a hung guest), or ran ``--timeout`` seconds in all (default none: a run that keeps
printing is making progress); ``none`` or 0 turns a limit off.

Exit codes of our own: 124 the VM hit one of those limits (and was killed; the message
says which), 125 the VM, the pool or the dependencies could not be set up. Standard
library only.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import deps, hosttools, pool, vm

#: Runs inside the guest (or locally) before the command; dsg_storage is on PYTHONPATH there.
POOL_CREATE = "python3 -m dsg_storage.testpool.pool create"
EXIT_TIMEOUT, EXIT_SETUP = 124, 125


def _log(message: str) -> None:
    print(f"[testpool] {message}", file=sys.stderr, flush=True)


def local_zfs_usable() -> bool:
    return Path("/dev/zfs").exists() and os.geteuid() == 0


def _pythonpath(*entries: Path | None) -> str:
    parts = [str(e) for e in entries if e is not None] + [os.environ.get("PYTHONPATH", "")]
    return os.pathsep.join(p for p in parts if p)


def run_local(command: list[str], checkout: Path, deps_dir: Path | None, pool_size: str | None = None) -> int:
    """Create the pool on this machine's ZFS and run ``command`` from ``checkout``."""
    if pool.main(["create", *(["--size", pool_size] if pool_size else [])]) != 0:
        return EXIT_SETUP
    env = {**os.environ, "PYTHONPATH": _pythonpath(checkout / "src", deps_dir, vm.PACKAGE_DIR.parent)}
    return subprocess.run(command, cwd=checkout, env=env, check=False).returncode


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give a command to run, e.g. dsg-storage-testpool run -- python3 -m pytest")
    checkout = Path.cwd()
    local = args.local or (local_zfs_usable() and not args.vm)
    if local and not local_zfs_usable():
        _log("error: --local needs /dev/zfs and root")
        return EXIT_SETUP
    requirements = [Path(r).resolve() for r in args.deps]
    deps_dir = deps.ensure(requirements, vm.cache_root(), guest=not local) if requirements else None
    if local:
        return run_local(command, checkout, deps_dir, args.pool_size)
    vm.ensure_image()
    size = f" --size {shlex.quote(args.pool_size)}" if args.pool_size else ""
    line = f"{POOL_CREATE}{size} >&2 || exit {EXIT_SETUP}; exec {shlex.join(command)}"
    return vm.run(
        line,
        checkout=checkout,
        deps=deps_dir,
        timeout=args.timeout,
        silence_timeout=args.silence_timeout,
        machine=vm.Machine(pool_disk=vm.pool_disk_bytes(pool.parse_size(args.pool_size)) if args.pool_size else None),
    )


def seconds(text: str) -> float | None:
    """A limit in seconds; ``none`` or 0: no limit."""
    if text.strip().lower() in ("none", "0"):
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (or 'none')")
    return value


def pool_size(text: str) -> str:
    """A pool size as ``pool create --size`` takes it, checked here so that a bad one
    is refused before a VM boots."""
    try:
        pool.parse_size(text)
    except pool.PoolError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text.strip()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dsg-storage-testpool", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="tool_command", required=True)
    run = sub.add_parser("run", help="create the dsgtest pool and run a command (in a VM without local ZFS)")
    where = run.add_mutually_exclusive_group()
    where.add_argument("--vm", action="store_true", help="use the VM even if local ZFS is usable")
    where.add_argument("--local", action="store_true", help="never use the VM")
    run.add_argument(
        "--silence-timeout",
        type=seconds,
        default=vm.DEFAULT_SILENCE_TIMEOUT,
        metavar="S",
        help=f"kill the VM once it printed nothing for S seconds (default {vm.DEFAULT_SILENCE_TIMEOUT:g}; 'none': never)",
    )
    run.add_argument(
        "--timeout",
        type=seconds,
        default=vm.DEFAULT_TIMEOUT,
        metavar="S",
        help="overall limit: kill the VM after S seconds in all (default: none)",
    )
    run.add_argument(
        "--pool-size",
        type=pool_size,
        metavar="SIZE",
        help=f"the dsgtest pool's size, e.g. 8G (default {pool.DEFAULT_SIZE}; in the VM on a disk of its own)",
    )
    run.add_argument(
        "--deps", action="append", default=[], metavar="REQUIREMENTS", help="pip requirements file (repeatable)"
    )
    run.add_argument("command", nargs=argparse.REMAINDER)
    sub.add_parser("build", help="build the VM image unless it is cached; print where it is")
    sub.add_parser("path", help="print where the VM image is (or would be) cached")
    deps_parser = sub.add_parser("deps", help="fetch requirements for the guest; print the directory")
    deps_parser.add_argument("requirements", nargs="+", type=Path)
    pool.add_arguments(sub.add_parser("pool", help="manage the dsgtest pool where ZFS runs"))
    return parser


def exit_on_sigterm() -> Any:
    """Make SIGTERM (``kill``, a CI's cancel) unwind like an exception, so that the VM is
    killed and its temporary files (a pool disk of many GB among them) are removed.
    Returns the handler it replaced."""

    def terminated(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    return signal.signal(signal.SIGTERM, terminated)


def main(argv: list[str] | None = None) -> int:
    previous = exit_on_sigterm()
    try:
        return _main(argv)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        if args.tool_command == "build":
            print(vm.ensure_image())
            return 0
        if args.tool_command == "path":
            print(vm.image_dir())
            return 0
        if args.tool_command == "deps":
            print(deps.ensure([r.resolve() for r in args.requirements], vm.cache_root()))
            return 0
        if args.tool_command == "pool":
            return pool.run(args)
        rc = _run(args, parser)
    except (vm.VMError, hosttools.HostToolsError, deps.DepsError) as exc:
        _log(f"error: {exc}")
        return EXIT_TIMEOUT if isinstance(exc, vm.VMTimeout) else EXIT_SETUP
    _log(f"phase total: {time.monotonic() - started:.1f}s (exit {rc})")
    return rc
