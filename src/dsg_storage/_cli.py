"""``dsg-storage``: the command line other tools script against.

    dsg-storage [--json] [--allow POOL[/PREFIX]] COMMAND ...

Exit status: 0 success; 1 a ZFS or transaction error; 2 bad usage or input (nothing was
touched); 3 not allowed by the allow-list; 4 repository or transaction not found;
5 dataset or repository busy; 6 another transaction is open; 7 conflict (the repository
changed after begin). Errors are one line on stderr: ``dsg-storage: <reason>``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import attrs

from . import __version__
from ._allow import AllowList
from ._errors import (
    ConflictError,
    DatasetBusyError,
    DsgStorageError,
    InvalidArgumentError,
    InvalidNameError,
    NotAllowedError,
    PoolUnavailableError,
    QueueItemNotFoundError,
    RepositoryBusyError,
    RepositoryNotFoundError,
    TransactionInProgressError,
    TransactionNotFoundError,
)
from ._queue import Item, Queue
from ._transaction import Commit, Repository, RepositoryStatus
from ._zfs import Zfs

EXIT_ERROR, EXIT_USAGE, EXIT_NOT_ALLOWED, EXIT_NOT_FOUND, EXIT_BUSY = 1, 2, 3, 4, 5
EXIT_IN_PROGRESS, EXIT_CONFLICT = 6, 7


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dsg-storage", description="Transactional changes to ZFS repositories.")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="POOL[/PREFIX]",
        help="pool or dataset prefix that may be changed (repeatable; adds to $DSG_STORAGE_ALLOW)",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="log ZFS steps to stderr")
    parser.add_argument("--version", action="version", version=f"dsg-storage {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("begin", help="open a transaction (init or sync, chosen automatically)")
    p.add_argument("repo")
    p.add_argument("--mountpoint", help="where the repository is mounted (required for init)")
    p.add_argument("--owner", metavar="UID:GID", help="owner of the repository's root directory")
    p.add_argument("--mode", metavar="OCTAL", help="mode of the repository's root directory, e.g. 0750")

    p = sub.add_parser("commit", help="make a transaction's workspace the repository")
    p.add_argument("repo")
    p.add_argument("tx")
    p.add_argument("-m", "--message", help="recorded on the commit snapshot")

    p = sub.add_parser("rollback", help="throw a transaction's workspace away")
    p.add_argument("repo")
    p.add_argument("tx")

    p = sub.add_parser("abort", help="roll back an open (possibly stale) transaction")
    p.add_argument("repo")
    p.add_argument("tx")

    p = sub.add_parser("recover", help="finish interrupted steps (also done by every changing command)")
    p.add_argument("repo")

    p = sub.add_parser("status", help="pending transactions, mountpoint, owner, last commit")
    p.add_argument("repo")

    p = sub.add_parser("history", help="commits, oldest first")
    p.add_argument("repo")

    p = sub.add_parser("snapshot", help="take a snapshot now, or queue it while the pool is away")
    p.add_argument("repo")
    p.add_argument("--name", help="snapshot name (default dsg-snapshot-<UTC time>)")
    p.add_argument("--queue", action="store_true", help="if the pool is unavailable, queue the request")

    p = sub.add_parser("queue", help="work that could not run yet: list, stats, flush, drop")
    queue_sub = p.add_subparsers(dest="queue_command", required=True, metavar="ACTION")
    queue_sub.add_parser("list", help="every item: id, kind, target, state, attempts, last error, age")
    queue_sub.add_parser("stats", help="counts per state, age of the oldest pending item")
    queue_sub.add_parser("flush", help="run every pending item now, due or not")
    drop = queue_sub.add_parser("drop", help="remove an item")
    drop.add_argument("id", type=int)

    sub.add_parser("gc", help="run the queue once (the items that are due)")

    p = sub.add_parser("demo", help="show a transaction on real ZFS (used by the README's first command)")
    p.add_argument("--parent", default="dsgtest/demo", help="dataset to work under (default: dsgtest/demo)")
    p.add_argument("--mount-dir", help="directory for the demo's mount paths (default: a new temporary one)")
    return parser


def _commit_json(commit: Commit | None) -> dict[str, Any] | None:
    return None if commit is None else {**attrs.asdict(commit), "name": commit.name}


def _status_json(status: RepositoryStatus) -> dict[str, Any]:
    return {
        "repository": status.repository,
        "exists": status.exists,
        "mountpoint": status.mountpoint,
        "mounted_at": list(status.mounted_at),
        "owner": status.owner,
        "mode": status.mode,
        "last_commit": _commit_json(status.last_commit),
        "pending": [
            {
                "tx": p.tx,
                "pattern": p.pattern.value,
                "state": p.state,
                "dataset": p.dataset,
                "path": p.path,
                "begun": p.begun,
            }
            for p in status.pending
        ],
        "leftovers": list(status.leftovers),
    }


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=None, sort_keys=True) if args.json else text)


def _run(args: argparse.Namespace, allow: AllowList) -> int:
    if args.command == "demo":
        from ._demo import run_demo

        run_demo(args.parent, args.mount_dir, allow | AllowList((args.parent,)))
        return 0
    if args.command in ("queue", "gc"):
        return _run_queue(args, allow)
    repo = Repository(args.repo, allow=allow)
    if args.command == "snapshot":
        return _snapshot(args, repo)
    if args.command == "begin":
        tx = repo.begin(mountpoint=args.mountpoint, owner=args.owner, mode=args.mode)
        _emit(
            args, {"tx": tx.id, "pattern": tx.pattern.value, "path": tx.path}, f"{tx.id}\t{tx.pattern.value}\t{tx.path}"
        )
    elif args.command == "commit":
        commit = repo.commit(args.tx, args.message)
        _emit(args, _commit_json(commit), commit.snapshot)
    elif args.command in ("rollback", "abort"):
        repo.rollback(args.tx)
        _emit(args, {"tx": args.tx, "rolled_back": True}, f"rolled back {args.tx}")
    elif args.command == "recover":
        actions = repo.recover()
        _emit(args, {"repository": repo.name, "actions": actions}, "\n".join(actions) or "nothing to recover")
    elif args.command == "status":
        status = repo.status()
        lines = [
            f"repository:  {status.repository}{'' if status.exists else ' (does not exist)'}",
            f"mountpoint:  {status.mountpoint or '-'} (mounted at: {', '.join(status.mounted_at) or 'nowhere'})",
            f"owner/mode:  {status.owner or '-'} {status.mode or ''}".rstrip(),
            f"last commit: {status.last_commit.name if status.last_commit else '-'}",
            f"pending:     {len(status.pending)}",
            *(f"  {p.tx}\t{p.pattern.value}\t{p.state}\tbegun {p.begun}\t{p.path}" for p in status.pending),
            *(f"leftover:    {name} (destruction still due)" for name in status.leftovers),
        ]
        _emit(args, _status_json(status), "\n".join(lines))
    elif args.command == "history":
        commits = repo.history()
        _emit(
            args,
            [_commit_json(c) for c in commits],
            "\n".join(f"{c.name}\t{c.committed}\t{c.tx}\t{c.message or ''}".rstrip() for c in commits),
        )
    return 0


def _item_json(item: Item, now: float) -> dict[str, Any]:
    return {
        "item": item.id,
        "id": item.id,
        "kind": item.kind.value,
        "target": item.target,
        "state": item.state.value,
        "attempts": item.attempts,
        "last_error": item.last_error,
        "age": round(item.age(now), 3),
        "next_at": item.next_at,
    }


def _item_line(item: Item, now: float) -> str:
    return (
        f"{item.id}\t{item.state.value}\t{item.kind.value}\t{item.target}\tattempts={item.attempts}"
        f"\tage={item.age(now):.0f}s\t{item.last_error or ''}"
    ).rstrip()


def _run_queue(args: argparse.Namespace, allow: AllowList) -> int:
    with Queue() as queue:
        now = queue.clock()
        action = "gc" if args.command == "gc" else args.queue_command
        if action == "list":
            items = queue.items()
            _emit(args, [_item_json(i, now) for i in items], "\n".join(_item_line(i, now) for i in items))
        elif action == "stats":
            stats = queue.stats()
            oldest = stats["oldest_pending_age"]
            text = " ".join(f"{k}={v}" for k, v in stats["counts"].items())
            _emit(args, stats, f"{text} oldest_pending_age={'-' if oldest is None else f'{oldest:.0f}s'}")
        elif action == "drop":
            item = queue.drop(args.id)
            _emit(args, {"dropped": _item_json(item, now)}, f"dropped {_item_line(item, now)}")
        else:  # flush or gc
            items = queue.run(Zfs(allow), due_only=action == "gc")
            _emit(args, [_item_json(i, now) for i in items], "\n".join(_item_line(i, now) for i in items))
    return 0


def _snapshot(args: argparse.Namespace, repo: Repository) -> int:
    now = datetime.now(UTC)
    name = f"{repo.name}@{args.name or 'dsg-snapshot-' + now.strftime('%Y%m%dT%H%M%SZ')}"
    try:
        repo.snapshot(name, requested=now)
    except PoolUnavailableError:
        if not args.queue:
            raise
        with Queue() as queue:
            item = queue.add_snapshot(name)
            _emit(args, {"queued": _item_json(item, queue.clock())}, f"queued {name} as item {item.id}")
        return 0
    _emit(args, {"snapshot": name, "requested": now.isoformat(timespec="seconds")}, name)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        allow = AllowList.from_env() | AllowList.parse(args.allow)
        return _run(args, allow)
    except DsgStorageError as exc:
        print(f"dsg-storage: {exc}", file=sys.stderr)
        if isinstance(exc, InvalidNameError | InvalidArgumentError):
            return EXIT_USAGE
        if isinstance(exc, NotAllowedError):
            return EXIT_NOT_ALLOWED
        if isinstance(exc, RepositoryNotFoundError | TransactionNotFoundError | QueueItemNotFoundError):
            return EXIT_NOT_FOUND
        if isinstance(exc, DatasetBusyError | RepositoryBusyError):
            return EXIT_BUSY
        if isinstance(exc, TransactionInProgressError):
            return EXIT_IN_PROGRESS
        if isinstance(exc, ConflictError):
            return EXIT_CONFLICT
        return EXIT_ERROR
