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
    PoolUnavailableError,
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
# first, logging only with a first message (_log), and every command imports what it
# uses inside its function, so `queue stats` never loads libzfs_core, the bundle code or
# the core (see the README's "Start-up cost"). Not typing.TYPE_CHECKING: see
# dsg_storage/__init__.py.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from typing import Any

    from ..core.records import Commit, RepositoryStatus
    from ..core.repository import Repository
    from ..queue import Item
    from ..read.reader import Reader
    from ..transfer.layout import BundleInfo
    from ..transfer.signing import Signature
    from ..zfs.allow import AllowList
    from .invocation import Caller, Input

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


def _default_audit_log() -> str:
    from ..transfer.audit import DEFAULT_PATH

    return str(DEFAULT_PATH)


def _audit_log(args: argparse.Namespace) -> str:
    return str(getattr(args, "audit_log", None) or _default_audit_log())


def _signature_json(signature: Signature) -> dict[str, Any]:
    import attrs

    return {"signature": attrs.asdict(signature), "signer": signature.signer}


def _commit_json(commit: Commit | None) -> dict[str, Any] | None:
    import attrs

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
                "age": p.age,
                "in_use": list(p.in_use),
            }
            for p in status.pending
        ],
        "leftovers": list(status.leftovers),
        "recovery_note": status.recovery_note,
        "access": "live",
    }


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    import json

    print(json.dumps(data, indent=None, sort_keys=True) if args.json else text)


def _reader(args: argparse.Namespace, allow: AllowList, inv: Caller) -> Reader:
    from ..read.cache import ENV as CACHE_ENV
    from ..read.cache import ReadCache
    from ..read.offline import open_offline
    from ..read.reader import open_live

    cache_path = inv.cache_path(args.cache or os.environ.get(CACHE_ENV))
    cache = ReadCache(cache_path, owner=inv.cache_owner) if cache_path else None
    if args.cached and cache is None:
        raise InvalidArgumentError(f"--cached needs a read cache: --cache FILE or ${CACHE_ENV}")
    if args.offline:
        return open_offline(args.search_path, pool=args.pool, cache=cache, cached=args.cached)
    if args.search_path or args.pool or args.cached:
        raise InvalidArgumentError("--search-path, --pool and --cached go with --offline")
    return open_live(allow=allow, cache=cache)


def _access(reader: Reader, kind: str, key: str) -> dict[str, Any]:
    from ..read.reader import CachedReader

    freshness, age = reader.freshness(kind, key)
    fields: dict[str, Any] = {"access": reader.mode.value, "freshness": freshness, "age": round(age, 3)}
    if isinstance(reader, CachedReader):
        fields.update(cached=True, cached_at=reader.taken_at(kind, key))
        print(f"cached: taken at {shown(str(fields['cached_at']))}, {age:.0f}s ago", file=sys.stderr)
    return fields


def _run_read(args: argparse.Namespace, reader: Reader) -> int:
    import attrs

    from ..read.reader import commit_to_json

    print(f"access: {shown(reader.describe())}", file=sys.stderr)
    if args.command == "history":
        commits = reader.history(args.repo)
        extra = _access(reader, "history", args.repo)
        _emit(
            args,
            [{**commit_to_json(c), **extra} for c in commits],
            "\n".join(
                f"{shown(c.name)}\t{shown(c.committed)}\t{shown(c.tx)}\t{shown(c.message or '')}".rstrip()
                for c in commits
            ),
        )
    elif args.command == "repos":
        repos = reader.repositories(args.under)
        extra = _access(reader, "repositories", args.under or str(reader.pool))
        _emit(
            args,
            [{**attrs.asdict(r), **extra} for r in repos],
            "\n".join(
                f"{shown(r.name)}\t{shown(r.mountpoint or '-')}\t{r.commits} commits\t{shown(r.last_commit or '-')}"
                for r in repos
            ),
        )
    elif args.command in ("ls", "stat"):
        entries = (
            reader.files(args.repo, args.path, commit=args.commit)
            if args.command == "ls"
            else [reader.stat(args.repo, args.path, commit=args.commit)]
        )
        fresh = reader.freshness("files", args.repo)[0]
        records = [{**attrs.asdict(e), "access": reader.mode.value, "freshness": fresh, "age": 0.0} for e in entries]
        _emit(
            args,
            records if args.command == "ls" else records[0],
            "\n".join(f"{e.type}\t{e.mode}\t{e.uid}:{e.gid}\t{e.size}\t{shown(e.path or '.')}" for e in entries),
        )
    elif args.command == "cat":
        data = reader.read(args.repo, args.path, commit=args.commit)
        if args.json:
            import base64
            import hashlib

            _emit(
                args,
                {
                    "access": reader.mode.value,
                    "path": args.path,
                    "commit": args.commit,
                    "size": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "content_base64": base64.b64encode(data).decode(),
                },
                "",
            )
        else:
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
    return 0


def _check_sudo(args: argparse.Namespace, inv: Caller) -> None:
    """Under sudo: what the policy forbids outright, and every dataset named on the command line."""
    if not inv.sudo:
        return
    if args.offline:
        inv.refuse("--offline (it imports pools from files the caller names)")
    if args.command == "demo":
        inv.refuse("demo (it creates and chowns datasets of its own)")
    if args.command == "repos" and not args.under:
        raise InvalidArgumentError("say under which dataset to list repositories")
    # Files root would read or write by a path the caller names: a key root signs with
    # (its own, say), an audit log anywhere. (The trust anchors of signatures: only the
    # policy's, Invocation.signers.)
    for flag, given in (
        ("--sign", getattr(args, "sign", None)),
        ("--audit-log", getattr(args, "audit_log", None) not in (None, _default_audit_log())),  # given, not the default
    ):
        if given:
            inv.refuse(f"{flag} (root would read or write a file the caller names)")
    for given in (getattr(args, "repo", None), getattr(args, "into", None), getattr(args, "under", None)):
        for name in given if isinstance(given, list) else [given]:  # metrics' --under is repeatable
            inv.check_dataset(name)


def _run(args: argparse.Namespace, allow: AllowList, inv: Caller | None = None) -> int:
    if inv is None:
        from .invocation import Direct

        inv = Direct()
    _check_sudo(args, inv)
    if args.command in READ_COMMANDS:
        with _reader(args, allow, inv) as reader:
            return _run_read(args, reader)
    if args.offline:
        if args.command == "status":
            raise InvalidArgumentError("status needs a live pool; offline, use repos, history, ls, stat or cat")
        raise ReadOnlyError(
            f"'{args.command}' changes the pool, and --offline access is read-only: nothing was changed"
        )
    if args.command == "bundle":
        return _run_bundle(args, allow, inv)
    if args.command in ("lock", "verify"):
        return _run_lock(args, allow, inv)
    if args.command == "demo":
        from ..zfs.allow import AllowList
        from .demo import DEMO_POOL, run_demo

        # The demo may add its own parent to the allow-list only inside the test pool.
        own = AllowList((args.parent,)) if args.parent.split("/", 1)[0] == DEMO_POOL else AllowList()
        run_demo(args.parent, args.mount_dir, allow | own)
        return 0
    if args.command in ("queue", "gc"):
        return _run_queue(args, allow, inv)
    from . import operations

    if args.command in operations.COMMANDS:
        return operations.run(args, allow, _emit, inv)
    if args.command == "status":
        return _status(args, allow, inv)
    if args.command == "recover" and (args.recover_pool is None) == (args.repo is None):
        raise InvalidArgumentError("recover: name a repository or give --pool POOL (not both)")
    if args.command == "recover" and args.recover_pool is not None:
        return _recover_pool(args, allow, inv)
    from ..core.repository import Repository

    repo = Repository(args.repo, allow=allow, policy=inv.policy)
    if getattr(args, "dry_run", False) and args.command in DRY_RUNS:
        return _dry_run(args, repo, inv)
    if args.command == "snapshot":
        return _snapshot(args, repo)
    if args.command == "begin":
        mountpoint = inv.mountpoint(args.mountpoint)
        owner = inv.owner(args.owner, creating=args.mountpoint is not None)
        tx = repo.begin(mountpoint=mountpoint, owner=owner, mode=args.mode)
        _emit(
            args,
            {"tx": tx.id, "pattern": tx.pattern.value, "path": tx.path},
            f"{tx.id}\t{tx.pattern.value}\t{shown(tx.path)}",
        )
    elif args.command == "commit":
        commit = repo.commit(args.tx, args.message, wait=args.wait)
        _emit(args, _commit_json(commit), shown(commit.snapshot))
    elif args.command in ("rollback", "abort"):
        repo.rollback(args.tx)
        _emit(args, {"tx": args.tx, "rolled_back": True}, f"rolled back {args.tx}")
    elif args.command == "recover":
        actions = repo.recover(abort_stale=args.abort_stale)
        _emit(
            args,
            {"repository": repo.name, "actions": actions},
            "\n".join(shown(action) for action in actions) or "nothing to recover",
        )
    return 0


def _recover_pool(args: argparse.Namespace, allow: AllowList, inv: Caller) -> int:
    """``recover --pool``: each repository's actions (or its plan, with ``--dry-run``),
    or its error; exits with the first error's status once all were tried."""
    from ..core.pool import recover_pool, repositories_in
    from ..core.repository import Repository
    from ..zfs.boundary import open_zfs

    zfs = open_zfs(allow)
    results: list[dict[str, Any]] = []
    lines: list[str] = []
    errors: list[DsgStorageError] = []
    if args.dry_run:
        for name in repositories_in(zfs, args.recover_pool):
            steps = Repository(name, zfs=zfs, policy=inv.policy).plan("recover")
            results.append({"repository": name, "steps": steps})
            lines += [shown(f"{name}: {step}") for step in steps] or [shown(f"{name}: nothing to do")]
    else:
        for done in recover_pool(args.recover_pool, zfs=zfs, policy=inv.policy):
            entry: dict[str, Any] = {"repository": done.repository, "actions": list(done.actions)}
            if done.error is not None:
                entry["error"] = str(done.error)
                errors.append(done.error)
                print(shown(f"dsg-storage: {done.repository}: {done.error}"), file=sys.stderr)
            results.append(entry)
            lines += [shown(f"{done.repository}: {action}") for action in done.actions]
            if not done.actions and done.error is None:
                lines.append(shown(f"{done.repository}: nothing to recover"))
    pool = args.recover_pool
    _emit(args, {"pool": pool, "repositories": results}, "\n".join(lines) or f"no allowed repository on {shown(pool)}")
    return _exit_status(errors[0]) if errors else 0


def _exit_status(exc: DsgStorageError) -> int:
    return next((code for kinds, code in _EXIT_STATUS if isinstance(exc, kinds)), EXIT_ERROR)


def _status(args: argparse.Namespace, allow: AllowList, inv: Caller) -> int:
    # core.status, not Repository: a read needs none of the transaction machinery.
    from .. import names
    from ..core.status import status as read_status
    from ..zfs.boundary import open_zfs

    name = names.validate_repository(args.repo)  # a bad name is exit 2, ZFS or not
    status = read_status(open_zfs(allow), name, inv.policy)
    lines = [
        f"repository:  {shown(status.repository)}{'' if status.exists else ' (does not exist)'}",
        "access:      live",
        shown(f"mountpoint:  {status.mountpoint or '-'} (mounted at: {', '.join(status.mounted_at) or 'nowhere'})"),
        f"owner/mode:  {shown(status.owner or '-')} {shown(status.mode or '')}".rstrip(),
        f"last commit: {shown(status.last_commit.name) if status.last_commit else '-'}",
        f"pending:     {len(status.pending)}",
        *(
            f"  {shown(p.tx)}\t{p.pattern.value}\t{shown(p.state)}\tbegun {shown(str(p.begun))}"
            + (f" ({p.age:.0f}s ago)" if p.age is not None else "")
            + f"\t{shown(p.path)}"
            + (f"\tin use by {shown(', '.join(p.in_use))}" if p.in_use else "")
            for p in status.pending
        ),
        *(f"leftover:    {shown(name)} (destruction still due)" for name in status.leftovers),
        *([f"recovery:    {shown(status.recovery_note)}"] if status.recovery_note else []),
    ]
    _emit(args, _status_json(status), "\n".join(lines))
    return 0


def _bundle_json(path: str, info: BundleInfo) -> dict[str, Any]:
    return {
        "file": path,
        "format_version": info.format_version,
        "metadata": dict(info.metadata),
        # the fixed fields last: a part's info (the author's) cannot override what the reader found
        "parts": [
            {**p.info, "info": dict(p.info), "index": p.index, "size": p.size, "digest": p.digest, "offset": p.offset}
            for p in info.parts
        ],
        "stream_bytes": info.total_size,
        "file_size": info.file_size,
    }


def _run_bundle(args: argparse.Namespace, allow: AllowList, inv: Caller) -> int:
    from ..transfer.export import export_bundle
    from .bundle_text import describe as describe_bundle
    from .bundle_text import write_progress

    action = args.bundle_command
    if action == "export":
        progress = None if args.json else write_progress(label="export")
        output = inv.output(args.output, force=args.force)
        exported = export_bundle(
            args.repo,
            output,
            snapshot=args.snapshot,
            since=args.since,
            progress=progress,
            sign=args.sign,
            audit_log=_audit_log(args),
        )
        _emit(
            args,
            {
                **_bundle_json(args.output, exported),
                "sha256": exported.sha256,
                "signature_file": exported.signature_file,
            },
            "\n".join(describe_bundle(exported)),
        )
        return 0
    from ..transfer.check import inspect_bundle

    # Imported from root's own copy when the file is not root's (sudo.Invocation.input),
    # made only once its ends read as a bundle's.
    private = args.bundle_command == "import" and not getattr(args, "dry_run", False)
    with inv.input(args.file, private=private, check=inspect_bundle) as given:
        return _run_bundle_file(args, allow, inv, given)


def _run_bundle_file(args: argparse.Namespace, allow: AllowList, inv: Caller, given: Input) -> int:
    import attrs

    from ..transfer.bundle import import_bundle
    from ..transfer.check import check_bundle, inspect_bundle
    from .bundle_text import describe as describe_bundle
    from .bundle_text import describe_signature, write_progress

    action = args.bundle_command
    path, source = given.path, given.source
    signers = inv.signers(args.allowed_signers) if action != "inspect" else None
    if action == "inspect":
        info = inspect_bundle(path)
        _emit(args, _bundle_json(args.file, info), "\n".join(describe_bundle(info)))
    elif action == "verify":
        checked = check_bundle(
            path,
            progress=None if args.json else write_progress(label="verify"),
            allowed_signers=signers,
            require_signature=args.require_signature or inv.signatures_required,
            source=source,
        )
        info = checked.info
        _emit(
            args,
            {
                **_bundle_json(args.file, info),
                "ok": True,
                "sha256": checked.sha256,
                **_signature_json(checked.signature),
            },
            f"{shown(args.file)}: ok ({len(info.parts)} streams, {info.file_size:,} bytes, every checksum matches, "
            f"each stream is the snapshot it claims); signature: {describe_signature(checked.signature)}",
        )
    elif getattr(args, "dry_run", False):  # the plan the import would run (core.receive)
        from ..transfer.bundle import plan_import

        if inv.sudo:
            inv.owner(args.owner or str(inv.invoker), creating=True)
        steps = plan_import(
            path,
            args.into,
            mountpoint=inv.mountpoint(args.mountpoint),
            allow=allow,
            owner=args.owner,
            mode=args.mode,
            allowed_signers=signers,
            require_signature=args.require_signature or inv.signatures_required,
            check_streams=args.check_streams,
            policy=inv.policy,
            source=source,
        )
        _emit(args, steps, "\n".join(shown(step) for step in steps))
    else:
        progress = None if args.json else write_progress(label="import")
        mountpoint = inv.mountpoint(args.mountpoint)
        if inv.sudo:  # the owner given for the new repository is checked like begin's
            inv.owner(args.owner or str(inv.invoker), creating=True)
        result = import_bundle(
            path,
            args.into,
            mountpoint=mountpoint,
            allow=allow,
            progress=progress,
            owner=args.owner,
            mode=args.mode,
            allowed_signers=signers,
            require_signature=args.require_signature or inv.signatures_required,
            audit_log=_audit_log(args),
            check_streams=args.check_streams,
            policy=inv.policy,
            source=source,
        )
        signed = f", signed by {result.signer}" if result.signer else ""
        _emit(
            args,
            attrs.asdict(result),
            shown(f"imported {result.kind} bundle into {result.repository}: {', '.join(result.snapshots)}{signed}"),
        )
    return 0


def _run_lock(args: argparse.Namespace, allow: AllowList, inv: Caller) -> int:
    import attrs

    from ..core.repository import Repository
    from ..transfer import lockfile
    from ..transfer.locking import read_lock_checked, write_lock

    repo = Repository(args.repo, allow=allow, policy=inv.policy)
    if args.command == "lock":
        if args.output and inv.sudo:
            lock = write_lock(repo.name)
            with inv.output(args.output, force=args.force) as out:
                os.write(out.fd, lockfile.dumps(lock).encode())
        else:
            lock = write_lock(repo.name, args.output, sign=args.sign)
        if args.output:
            _emit(
                args,
                {
                    "file": args.output,
                    "repository": repo.name,
                    "commits": len(lock.commits),
                    "signature_file": f"{args.output}.sig" if args.sign else None,
                },
                shown(f"{args.output}: {len(lock.commits)} commits of {repo.name}"),
            )
        else:
            sys.stdout.write(lockfile.dumps(lock))
        return 0
    with inv.input(args.lock) as given:
        lock, signature = read_lock_checked(
            given.path,
            allowed_signers=inv.signers(args.allowed_signers),
            require_signature=args.require_signature or inv.signatures_required,
            source=given.source,
        )
    diff = lockfile.compare(lock, [lockfile.LockedCommit(c.name, c.guid) for c in repo.history()])
    as_json = {
        "repository": repo.name,
        "lock": args.lock,
        "matches": diff.matches,
        "missing": [attrs.asdict(c) | {"guid": str(c.guid)} for c in diff.missing],
        "extra": [attrs.asdict(c) | {"guid": str(c.guid)} for c in diff.extra],
        "changed": [{"name": a.name, "locked_guid": str(a.guid), "actual_guid": str(b.guid)} for a, b in diff.changed],
        "reordered": diff.reordered,
        **_signature_json(signature),
    }
    signed = f" (signed by {signature.signer})" if signature.signer else ""
    text = (
        shown(f"{repo.name} matches {args.lock}{signed}")
        if diff.matches
        else "\n".join(
            [
                shown(f"{repo.name} does not match {args.lock}{signed}:"),
                *(f"  {shown(line)}" for line in diff.describe()),
            ]
        )
    )
    _emit(args, as_json, text)
    return 0 if diff.matches else EXIT_MISMATCH


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
        f"{item.id}\t{item.state.value}\t{item.kind.value}\t{shown(item.target)}\tattempts={item.attempts}"
        f"\tage={item.age(now):.0f}s\t{shown(item.last_error or '')}"
    ).rstrip()


def _run_queue(args: argparse.Namespace, allow: AllowList, inv: Caller) -> int:
    from ..queue import Queue

    # Through sudo the caller sees, counts, drops and runs only the items of datasets its
    # policy (narrowed by --allow) allows: the queue is root's, shared by every caller.
    only = allow.allows if inv.sudo else None
    with Queue() as queue:
        now = queue.clock()
        action = "gc" if args.command == "gc" else args.queue_command
        if action == "list":
            items = [i for i in queue.items() if only is None or only(i.target)]
            _emit(args, [_item_json(i, now) for i in items], "\n".join(_item_line(i, now) for i in items))
        elif action == "stats":
            stats = queue.stats(only=only)
            oldest = stats["oldest_pending_age"]
            text = " ".join(f"{k}={v}" for k, v in stats["counts"].items())
            _emit(
                args,
                stats,
                f"{text} oldest_pending_age={'-' if oldest is None else f'{oldest:.0f}s'} "
                f"max_pending={stats['max_pending']} free={stats['free']}",
            )
        elif action == "drop":
            if only is not None and not only(queue.get(args.id).target):  # its target is not named
                raise NotAllowedError(
                    f"queue item {args.id} is on a dataset outside those allowed ({', '.join(allow.prefixes) or 'none'}): "
                    "nothing was dropped"
                )
            item = queue.drop(args.id)
            _emit(args, {"dropped": _item_json(item, now)}, f"dropped {_item_line(item, now)}")
        elif args.dry_run:  # flush or gc, planned only
            items = queue.due(due_only=action == "gc", pool=args.queue_pool)
            items = [i for i in items if only is None or only(i.target)]
            steps = [{**_item_json(i, now), "step": f"{i.kind.value} {i.target}"} for i in items]
            _emit(
                args, steps, "\n".join(shown(f"would {s['step']} (item {s['id']})") for s in steps) or "nothing to do"
            )
        else:  # flush or gc
            from ..zfs.boundary import open_zfs

            items = queue.run(open_zfs(allow), due_only=action == "gc", pool=args.queue_pool, only_allowed=inv.sudo)
            _emit(args, [_item_json(i, now) for i in items], "\n".join(_item_line(i, now) for i in items))
    return 0


DRY_RUNS = ("begin", "commit", "rollback", "abort", "recover", "snapshot")


def _dry_run(args: argparse.Namespace, repo: Repository, inv: Caller) -> int:
    """``--dry-run``: the steps the command would take now, changing nothing."""
    if args.command == "snapshot":
        steps = [f"snapshot {repo.name}@{args.name or 'dsg-snapshot-<UTC time>'}"]
    elif args.command == "begin":
        mountpoint = inv.mountpoint(args.mountpoint)
        owner = inv.owner(args.owner, creating=args.mountpoint is not None)
        steps = repo.plan("begin", mountpoint=mountpoint, owner=owner, mode=args.mode)
    elif args.command == "commit":
        steps = repo.plan("commit", args.tx, message=args.message)
    elif args.command in ("rollback", "abort"):
        steps = repo.plan("rollback", args.tx)
    else:
        steps = repo.plan("recover")
    _emit(args, steps, "\n".join(shown(step) for step in steps) or "nothing to do")
    return 0


def _snapshot(args: argparse.Namespace, repo: Repository) -> int:
    from datetime import UTC, datetime

    from ..queue import Queue

    now = datetime.now(UTC)
    name = f"{repo.name}@{args.name or 'dsg-snapshot-' + now.strftime('%Y%m%dT%H%M%SZ')}"
    try:
        repo.snapshot(name, requested=now)
    except PoolUnavailableError:
        if not args.queue:
            raise
        with Queue() as queue:
            item = queue.add_snapshot(name)
            _emit(args, {"queued": _item_json(item, queue.clock())}, shown(f"queued {name} as item {item.id}"))
        return 0
    _emit(args, {"snapshot": name, "requested": now.isoformat(timespec="seconds")}, shown(name))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit status (the module's docstring lists them)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    from .. import _log
    from .parser import parse

    args = parse(argv)
    # Applied when the first message is logged: a command that logs nothing never imports logging.
    _log.configure(level="DEBUG" if args.verbose else "WARNING", format="%(name)s: %(message)s")
    try:
        from ..zfs.allow import AllowList
        from .invocation import invocation

        inv = invocation(os.environ)
        if inv.ignored:  # said once, on stderr, so a caller relying on them learns why
            print(f"dsg-storage: run through sudo, ignoring {', '.join(inv.ignored)}", file=sys.stderr)
        allow = inv.allow(AllowList.parse(args.allow))
        return _run(args, allow, inv)
    except DsgStorageError as exc:
        print(shown(f"dsg-storage: {exc}"), file=sys.stderr)
        return _exit_status(exc)
    except FileNotFoundError as exc:  # a file asked of ls/stat/cat
        print(shown(f"dsg-storage: {exc.filename}: {exc.strerror}"), file=sys.stderr)
        return EXIT_NOT_FOUND
    except FileExistsError as exc:  # an output file, through sudo without --force
        print(shown(f"dsg-storage: {exc.filename}: {exc.strerror}"), file=sys.stderr)
        return EXIT_USAGE
    except PermissionError as exc:  # an output file the invoking user may not write
        print(shown(f"dsg-storage: {exc.filename}: {exc.strerror} (as the invoking user)"), file=sys.stderr)
        return EXIT_NOT_ALLOWED
