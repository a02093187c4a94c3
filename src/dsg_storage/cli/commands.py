"""``dsg-storage``: the command line other tools script against.

    dsg-storage [--json] [--allow POOL[/PREFIX]] COMMAND ...

Exit status: 0 success; 1 a ZFS or transaction error; 2 bad usage or input (nothing was
touched); 3 not allowed by the allow-list; 4 repository, transaction, pool or file not
found; 5 dataset or repository busy; 6 another transaction is open; 7 conflict (the
repository changed after begin); 8 read-only (a change asked of an offline pool);
9 a bundle or lock file that cannot be used (damaged, truncated, newer format, wrong
base); 10 the repository does not match the lock file; 11 the queue is full (the new
work was refused, nothing was dropped). Errors are one line on stderr:
``dsg-storage: <reason>``.

Read commands (``repos``, ``history``, ``ls``, ``stat``, ``cat``) work live or, with
``--offline --search-path PATHS``, on an exported pool imported read-only for the call.
They always show how they read: ``access: live|offline ...`` on stderr, and an
``"access"`` field in every ``--json`` record (``"cached"``/``"cached_at"`` too when
served from the read cache).

Run through sudo (``SUDO_UID`` set), every command needs the root-owned policy file
``/etc/dsg-storage/policy.toml`` and stays inside it (``cli/sudo.py``): ``--allow`` only
narrows it, ``DSG_STORAGE_*`` variables are ignored, output files are written as the
invoking user and replace nothing without ``--force``. A refusal is exit status 3.
"""

from __future__ import annotations

import os
import sys

from ..errors import (
    BundleError,
    ConflictError,
    DatasetBusyError,
    DsgStorageError,
    InvalidArgumentError,
    InvalidNameError,
    LockFileError,
    NotAllowedError,
    PoolNotFoundError,
    QueueFullError,
    QueueItemNotFoundError,
    ReadOnlyError,
    RepositoryBusyError,
    RepositoryNotFoundError,
    TransactionInProgressError,
    TransactionNotFoundError,
)
from ..present import shown

# Start-up cost: `--version` never gets here (cli/__init__.py answers it); argparse comes
# first, logging only with a first message (_log), and each command's handler lives in
# the module of its noun (``HANDLERS``), imported when the command runs, and imports what
# it uses inside its function, so `queue stats` never loads libzfs_core, the bundle code
# or the core (see the README's "Start-up cost"). Not typing.TYPE_CHECKING: see
# dsg_storage/__init__.py.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, MutableMapping, Sequence

    from .context import Boundary, Context
    from .invocation import Caller

    Handler = Callable[[Context], int]

EXIT_ERROR, EXIT_USAGE, EXIT_NOT_ALLOWED, EXIT_NOT_FOUND, EXIT_BUSY = 1, 2, 3, 4, 5
EXIT_IN_PROGRESS, EXIT_CONFLICT, EXIT_READ_ONLY, EXIT_BAD_FILE, EXIT_MISMATCH = 6, 7, 8, 9, 10
EXIT_QUEUE_FULL = 11
READ_COMMANDS = ("repos", "history", "ls", "stat", "cat")
#: The exit status of an error: the first kind it is (the module's docstring lists them);
#: any other DsgStorageError is EXIT_ERROR.
_EXIT_STATUS: tuple[tuple[tuple[type[DsgStorageError], ...], int], ...] = (
    ((InvalidNameError, InvalidArgumentError), EXIT_USAGE),
    ((NotAllowedError,), EXIT_NOT_ALLOWED),
    ((ReadOnlyError,), EXIT_READ_ONLY),
    ((BundleError, LockFileError), EXIT_BAD_FILE),
    ((RepositoryNotFoundError, TransactionNotFoundError, QueueItemNotFoundError, PoolNotFoundError), EXIT_NOT_FOUND),
    ((DatasetBusyError, RepositoryBusyError), EXIT_BUSY),
    ((TransactionInProgressError,), EXIT_IN_PROGRESS),
    ((ConflictError,), EXIT_CONFLICT),
    ((QueueFullError,), EXIT_QUEUE_FULL),
)

#: Each command's handler, ``module.function`` in this package; a command with actions
#: (``bundle``, ``queue``, ``cache``) has one per action, keyed ``"command action"``.
HANDLERS: dict[str, str] = {
    "begin": "transactions.begin",
    "commit": "transactions.commit",
    "rollback": "transactions.rollback",
    "abort": "transactions.rollback",
    "recover": "transactions.recover",
    "snapshot": "transactions.snapshot",
    "snapshot-ok": "transactions.snapshot_ok",
    "status": "transactions.status",
    "repos": "reads.repos",
    "history": "reads.history",
    "ls": "reads.ls",
    "stat": "reads.stat",
    "cat": "reads.cat",
    "bundle export": "bundles.export",
    "bundle inspect": "bundles.inspect",
    "bundle verify": "bundles.verify",
    "bundle import": "bundles.import_",
    "lock": "locks.lock",
    "verify": "locks.verify",
    "queue list": "queue.list_items",
    "queue stats": "queue.stats",
    "queue flush": "queue.flush",
    "queue drop": "queue.drop",
    "gc": "queue.gc",
    "prune": "operations.prune",
    "keep": "operations.keep",
    "metrics": "operations.metrics",
    "install-hooks": "operations.install_hooks",
    "cache stats": "operations.cache_stats",
    "cache clear": "operations.cache_clear",
    "demo": "demo.demo",
}


def command_key(args: argparse.Namespace) -> str:
    """``HANDLERS``' key for the parsed command: ``"queue stats"``, ``"begin"``."""
    action = getattr(args, f"{args.command.replace('-', '_')}_command", None)
    return f"{args.command} {action}" if action else str(args.command)


def handler(args: argparse.Namespace) -> Handler:
    """The parsed command's handler, its module imported now (and only it)."""
    module, _, function = HANDLERS[command_key(args)].rpartition(".")
    # __import__, not importlib: a builtin, where importlib would be one more module to load.
    found: Handler = getattr(__import__(f"{__package__}.{module}", fromlist=[function]), function)
    return found


def audit_log(args: argparse.Namespace) -> str:
    """``--audit-log``, or the audit log's standard path."""
    from ..transfer.audit import DEFAULT_PATH

    return str(getattr(args, "audit_log", None) or DEFAULT_PATH)


def _check_sudo(args: argparse.Namespace, inv: Caller) -> None:
    """Under sudo: what the policy forbids outright, and every dataset named on the command line."""
    if not inv.sudo:
        return
    if args.offline or getattr(args, "userland", False):
        inv.refuse("--offline/--userland (they read pools from files the caller names)")
    if args.command == "demo":
        inv.refuse("demo (it creates and chowns datasets of its own)")
    if args.command == "repos" and not args.under:
        raise InvalidArgumentError("say under which dataset to list repositories")
    # Files root would read or write by a path the caller names: a key root signs with
    # (its own, say), an audit log anywhere. (The trust anchors of signatures: only the
    # policy's, Invocation.signers.)
    from ..transfer.audit import DEFAULT_PATH as DEFAULT_AUDIT_LOG

    for flag, given in (
        ("--sign", getattr(args, "sign", None)),
        (
            "--audit-log",
            getattr(args, "audit_log", None) not in (None, str(DEFAULT_AUDIT_LOG)),
        ),  # given, not the default
    ):
        if given:
            inv.refuse(f"{flag} (root would read or write a file the caller names)")
    for given in (getattr(args, "repo", None), getattr(args, "into", None), getattr(args, "under", None)):
        for name in given if isinstance(given, list) else [given]:  # metrics' --under is repeatable
            inv.check_dataset(name)


def run(ctx: Context) -> int:
    """Run the parsed command with its context; returns its exit status (errors raise)."""
    args = ctx.args
    _check_sudo(args, ctx.caller)
    if not getattr(args, "userland", False) and (getattr(args, "userland_force", False) or args.key_file):
        raise InvalidArgumentError(
            "--force and --key-file go with --userland (before the command: a command's own --force comes after it)"
        )
    if (args.offline or getattr(args, "userland", False)) and args.command not in READ_COMMANDS:
        if args.command == "status":
            raise InvalidArgumentError("status needs a live pool; offline, use repos, history, ls, stat or cat")
        raise ReadOnlyError(
            f"'{args.command}' changes the pool, and --offline access is read-only: nothing was changed"
        )
    return handler(args)(ctx)


def exit_status(exc: DsgStorageError) -> int:
    return next((code for kinds, code in _EXIT_STATUS if isinstance(exc, kinds)), EXIT_ERROR)


def main(
    argv: Sequence[str] | None = None,
    *,
    zfs: Boundary | None = None,
    environ: MutableMapping[str, str] | None = None,
) -> int:
    """Run one command; returns its exit status (the module's docstring lists them).

    ``zfs`` opens the ZFS boundary for an allow-list (default: the real one); ``environ``
    is the environment the settings are read from (default ``os.environ``). Tests give
    both, to run a command in-process against the in-memory pool."""
    argv = list(sys.argv[1:] if argv is None else argv)
    from .. import _log
    from .parser import parse

    args = parse(argv)
    # Applied when the first message is logged: a command that logs nothing never imports logging.
    _log.configure(level="DEBUG" if args.verbose else "WARNING", format="%(name)s: %(message)s")
    try:
        from ..settings import Settings
        from ..zfs.allow import AllowList
        from .context import Context, invocation, open_boundary, open_lister

        environ = os.environ if environ is None else environ
        settings = Settings.for_cli(environ)  # the one reading of the environment
        inv = invocation(environ, settings)
        if inv.ignored:  # said once, on stderr, so a caller relying on them learns why
            print(f"dsg-storage: run through sudo, ignoring {', '.join(inv.ignored)}", file=sys.stderr)
        allow = inv.allow(AllowList.parse(args.allow))
        boundary, lister = (zfs, None) if zfs else (open_boundary, open_lister)
        return run(Context(args, allow, inv, settings, boundary, sys.stdout, sys.stderr, lister))
    except DsgStorageError as exc:
        print(shown(f"dsg-storage: {exc}"), file=sys.stderr)
        return exit_status(exc)
    except FileNotFoundError as exc:  # a file asked of ls/stat/cat
        print(shown(f"dsg-storage: {exc.filename}: {exc.strerror}"), file=sys.stderr)
        return EXIT_NOT_FOUND
    except FileExistsError as exc:  # an output file, through sudo without --force
        print(shown(f"dsg-storage: {exc.filename}: {exc.strerror}"), file=sys.stderr)
        return EXIT_USAGE
    except PermissionError as exc:  # an output file the invoking user may not write
        print(shown(f"dsg-storage: {exc.filename}: {exc.strerror} (as the invoking user)"), file=sys.stderr)
        return EXIT_NOT_ALLOWED
