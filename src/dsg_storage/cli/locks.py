"""``lock`` (write a lock file: a repository's commits with their GUIDs) and ``verify``
(does the repository match one?). Each handler imports what it uses inside its function
(see ``commands``).
"""

from __future__ import annotations

from ..present import shown

TYPE_CHECKING = False  # not typing's: see dsg_storage/__init__.py
if TYPE_CHECKING:
    from .context import Context


def lock(ctx: Context) -> int:
    import os

    from ..transfer import lockfile
    from ..transfer.locking import write_lock
    from ..zfs.allow import AllowList

    args, inv = ctx.args, ctx.caller
    repo = ctx.repository(args.repo, reads_only=True)
    zfs = ctx.lists(AllowList(()))  # reads only: by zfs commands, never loading libzfs_core
    if args.output and inv.sudo:
        written = write_lock(repo.name, zfs=zfs)
        with inv.output(args.output, force=args.force) as out:
            os.write(out.fd, lockfile.dumps(written).encode())
    else:
        written = write_lock(repo.name, args.output, zfs=zfs, sign=args.sign)
    if args.output:
        ctx.emit(
            {
                "file": args.output,
                "repository": repo.name,
                "commits": len(written.commits),
                "signature_file": f"{args.output}.sig" if args.sign else None,
            },
            shown(f"{args.output}: {len(written.commits)} commits of {repo.name}"),
        )
    else:
        ctx.stdout.write(lockfile.dumps(written))
    return 0


def verify(ctx: Context) -> int:
    import attrs

    from ..transfer import lockfile
    from ..transfer.locking import read_lock_checked
    from .bundles import signature_json
    from .commands import EXIT_MISMATCH

    args, inv = ctx.args, ctx.caller
    repo = ctx.repository(args.repo, reads_only=True)  # its history alone
    with inv.input(args.lock) as given:
        locked, signature = read_lock_checked(
            given.path,
            allowed_signers=inv.signers(args.allowed_signers),
            require_signature=args.require_signature or inv.signatures_required,
            source=given.source,
        )
    diff = lockfile.compare(locked, [lockfile.LockedCommit(c.name, c.guid) for c in repo.history()])
    as_json = {
        "repository": repo.name,
        "lock": args.lock,
        "matches": diff.matches,
        "missing": [attrs.asdict(c) | {"guid": str(c.guid)} for c in diff.missing],
        "extra": [attrs.asdict(c) | {"guid": str(c.guid)} for c in diff.extra],
        "changed": [{"name": a.name, "locked_guid": str(a.guid), "actual_guid": str(b.guid)} for a, b in diff.changed],
        "reordered": diff.reordered,
        **signature_json(signature),
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
    ctx.emit(as_json, text)
    return 0 if diff.matches else EXIT_MISMATCH
