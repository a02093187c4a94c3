"""The transaction commands: ``begin``, ``commit``, ``rollback``/``abort``, ``recover``
(of a repository, or of every allowed one of a pool), ``snapshot`` and ``status``.

With ``--dry-run`` each prints the steps it would take now and changes nothing.
Each handler imports what it uses inside its function (see ``commands``).
"""

from __future__ import annotations

from ..errors import DsgStorageError, InvalidArgumentError, PoolUnavailableError
from ..present import shown

TYPE_CHECKING = False  # not typing's: see dsg_storage/__init__.py
if TYPE_CHECKING:
    from typing import Any

    from ..core.records import Commit, RepositoryStatus
    from .context import Context


def commit_json(commit: Commit | None) -> dict[str, Any] | None:
    import attrs

    return None if commit is None else {**attrs.asdict(commit), "name": commit.name}


def _steps(ctx: Context, steps: list[str]) -> int:
    """What a ``--dry-run`` prints: the steps, or that there is nothing to do."""
    ctx.emit(steps, "\n".join(shown(step) for step in steps) or "nothing to do")
    return 0


def properties(given: list[str]) -> dict[str, str]:
    """``--property NAME=VALUE`` flags as a mapping, each name once and checked as
    ``Repository.begin`` checks it (InvalidArgumentError)."""
    from ..core.options import check_user_properties

    props: dict[str, str] = {}
    for item in given:
        name, equals, value = item.partition("=")
        if not equals:
            raise InvalidArgumentError(f"--property {item!r}: give NAME=VALUE, e.g. org.example:job=nightly")
        if name in props:
            raise InvalidArgumentError(f"--property {name!r} is given twice")
        props[name] = value
    return check_user_properties(props)


def begin(ctx: Context) -> int:
    args, inv = ctx.args, ctx.caller
    repo = ctx.repository(args.repo)
    mountpoint = inv.mountpoint(args.mountpoint)
    owner = inv.owner(args.owner, creating=args.mountpoint is not None)
    props = inv.properties(properties(args.properties))
    if args.dry_run:  # the properties were checked as begin would: a dry run refuses what it would
        return _steps(ctx, repo.plan("begin", mountpoint=mountpoint, owner=owner, mode=args.mode))
    tx = repo.begin(mountpoint=mountpoint, owner=owner, mode=args.mode, properties=props)
    ctx.emit(
        {"tx": tx.id, "pattern": tx.pattern.value, "path": tx.path},
        f"{tx.id}\t{tx.pattern.value}\t{shown(tx.path)}",
    )
    return 0


def commit(ctx: Context) -> int:
    args = ctx.args
    repo = ctx.repository(args.repo)
    if args.dry_run:
        return _steps(ctx, repo.plan("commit", args.tx, message=args.message))
    done = repo.commit(args.tx, args.message, wait=args.wait)
    ctx.emit(commit_json(done), shown(done.snapshot))
    return 0


def rollback(ctx: Context) -> int:
    """``rollback`` and ``abort``: the same step."""
    args = ctx.args
    repo = ctx.repository(args.repo)
    if args.dry_run:
        return _steps(ctx, repo.plan("rollback", args.tx))
    repo.rollback(args.tx)
    ctx.emit({"tx": args.tx, "rolled_back": True}, f"rolled back {args.tx}")
    return 0


def recover(ctx: Context) -> int:
    args = ctx.args
    if (args.recover_pool is None) == (args.repo is None):
        raise InvalidArgumentError("recover: name a repository or give --pool POOL (not both)")
    if args.recover_pool is not None:
        return recover_pool(ctx)
    repo = ctx.repository(args.repo)
    if args.dry_run:
        return _steps(ctx, repo.plan("recover"))
    actions = repo.recover(abort_stale=args.abort_stale)
    ctx.emit(
        {"repository": repo.name, "actions": actions},
        "\n".join(shown(action) for action in actions) or "nothing to recover",
    )
    return 0


def recover_pool(ctx: Context) -> int:
    """``recover --pool``: each repository's actions (or its plan, with ``--dry-run``),
    or its error; exits with the first error's status once all were tried."""
    from ..core.pool import recover_pool, repositories_in
    from ..core.repository import Repository
    from .commands import exit_status

    args, policy = ctx.args, ctx.caller.policy
    zfs = ctx.zfs()
    results: list[dict[str, Any]] = []
    lines: list[str] = []
    errors: list[DsgStorageError] = []
    if args.dry_run:
        for name in repositories_in(zfs, args.recover_pool):
            steps = Repository(name, zfs=zfs, policy=policy, settings=ctx.settings).plan("recover")
            results.append({"repository": name, "steps": steps})
            lines += [shown(f"{name}: {step}") for step in steps] or [shown(f"{name}: nothing to do")]
    else:
        # The pool-wide read through zfs commands: nothing to recover loads no bindings.
        done_all = recover_pool(args.recover_pool, zfs=zfs, policy=policy, settings=ctx.settings, lists=ctx.lists())
        for done in done_all:
            entry: dict[str, Any] = {"repository": done.repository, "actions": list(done.actions)}
            if done.error is not None:
                entry["error"] = str(done.error)
                errors.append(done.error)
                ctx.note(shown(f"dsg-storage: {done.repository}: {done.error}"))
            results.append(entry)
            lines += [shown(f"{done.repository}: {action}") for action in done.actions]
            if not done.actions and done.error is None:
                lines.append(shown(f"{done.repository}: nothing to recover"))
    pool = args.recover_pool
    ctx.emit({"pool": pool, "repositories": results}, "\n".join(lines) or f"no allowed repository on {shown(pool)}")
    return exit_status(errors[0]) if errors else 0


def snapshot(ctx: Context) -> int:
    from datetime import UTC, datetime

    args = ctx.args
    repo = ctx.repository(args.repo)
    if args.dry_run:
        return _steps(ctx, [f"snapshot {repo.name}@{args.name or 'dsg-snapshot-<UTC time>'}"])
    now = datetime.now(UTC)
    name = f"{repo.name}@{args.name or 'dsg-snapshot-' + now.strftime('%Y%m%dT%H%M%SZ')}"
    try:
        repo.snapshot(name, requested=now)
    except PoolUnavailableError:
        if not args.queue:
            raise
        from .queue import item_json

        with ctx.queue() as queue:
            item = queue.add_snapshot(name)
            ctx.emit({"queued": item_json(item, queue.clock())}, shown(f"queued {name} as item {item.id}"))
        return 0
    ctx.emit({"snapshot": name, "requested": now.isoformat(timespec="seconds")}, shown(name))
    return 0


def snapshot_ok(ctx: Context) -> int:
    """``snapshot-ok [DATASET ...]``, the hook snapshot tools run first (sanoid's
    ``pre_snapshot_script`` with ``no_inconsistent_snapshot``, zrepl's pre-snapshot
    command hook): exit 0 when no transaction or import is in flight at or under each
    dataset, else EXIT_IN_PROGRESS, saying which; the tool then skips this snapshot.
    Without datasets, the ones the tool names (``$SANOID_TARGETS``, ``$ZREPL_FS``)."""
    from .. import names
    from ..core.status import in_flight
    from ..zfs.allow import AllowList
    from .commands import EXIT_IN_PROGRESS

    targets = ctx.args.datasets or list(ctx.settings.snapshot_targets)
    if not targets:
        raise InvalidArgumentError("which datasets? name them, or run as a hook ($SANOID_TARGETS, $ZREPL_FS)")
    zfs = ctx.lists(AllowList(()))  # reads only
    busy = [
        {"repository": repo, "tx": tx, "what": what}
        for target in targets
        for repo, tx, what in in_flight(zfs, names.validate_repository(target))
    ]
    lines = [shown(f"{b['repository']}: {b['what']} in flight ({b['tx']}): skip this snapshot") for b in busy]
    ctx.emit({"ok": not busy, "datasets": targets, "in_flight": busy}, "\n".join(lines) or "ok")
    return EXIT_IN_PROGRESS if busy else 0


def _status_json(status: RepositoryStatus) -> dict[str, Any]:
    return {
        "repository": status.repository,
        "exists": status.exists,
        "mountpoint": status.mountpoint,
        "mounted_at": list(status.mounted_at),
        "owner": status.owner,
        "mode": status.mode,
        "last_commit": commit_json(status.last_commit),
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
        "kept": dict(status.kept),
        "replica": status.replica,
        "access": "live",
    }


def status(ctx: Context) -> int:
    # core.status, not Repository: a read needs none of the transaction machinery.
    from .. import names
    from ..core.status import status as read_status

    name = names.validate_repository(ctx.args.repo)  # a bad name is exit 2, ZFS or not
    status = read_status(ctx.lists(), name, ctx.caller.policy)
    lines = [
        f"repository:  {shown(status.repository)}{'' if status.exists else ' (does not exist)'}",
        "access:      live",
        *(
            ["replica:     yes (its properties were received: not acted on here without --primary)"]
            if status.replica
            else []
        ),
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
        *(
            f"leftover:    {shown(name)} (destruction still due"
            + (f"; kept by another tool: {shown(status.kept[name])})" if name in status.kept else ")")
            for name in status.leftovers
        ),
        *([f"recovery:    {shown(status.recovery_note)}"] if status.recovery_note else []),
    ]
    ctx.emit(_status_json(status), "\n".join(lines))
    return 0
