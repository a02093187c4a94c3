"""``bundle export|inspect|verify|import``: repository snapshots as a verified file.

A file the command reads is given by the caller (``Caller.input``: through sudo, opened
as the invoking user, and imported from root's own copy when it is not root's).
Each handler imports what it uses inside its function (see ``commands``).
"""

from __future__ import annotations

from ..present import shown
from .commands import audit_log

TYPE_CHECKING = False  # not typing's: see dsg_storage/__init__.py
if TYPE_CHECKING:
    from typing import Any

    from ..transfer.layout import BundleInfo
    from ..transfer.signing import Signature
    from .context import Context
    from .invocation import Input


def signature_json(signature: Signature) -> dict[str, Any]:
    import attrs

    return {"signature": attrs.asdict(signature), "signer": signature.signer}


def bundle_json(path: str, info: BundleInfo) -> dict[str, Any]:
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


def export(ctx: Context) -> int:
    from ..transfer.export import export_bundle
    from ..zfs.allow import AllowList
    from .bundle_text import describe as describe_bundle
    from .bundle_text import write_progress

    args = ctx.args
    progress = None if args.json else write_progress(label="export")
    output = ctx.caller.output(args.output, force=args.force)
    exported = export_bundle(
        args.repo,
        output,
        snapshot=args.snapshot,
        since=args.since,
        progress=progress,
        zfs=ctx.zfs(AllowList(())),  # reads only
        sign=args.sign,
        audit_log=audit_log(args),
    )
    ctx.emit(
        {**bundle_json(args.output, exported), "sha256": exported.sha256, "signature_file": exported.signature_file},
        "\n".join(describe_bundle(exported)),
    )
    return 0


def inspect(ctx: Context) -> int:
    from ..transfer.check import inspect_bundle
    from .bundle_text import describe as describe_bundle

    args = ctx.args
    with ctx.caller.input(args.file, check=inspect_bundle) as given:
        info = inspect_bundle(given.path)
        ctx.emit(bundle_json(args.file, info), "\n".join(describe_bundle(info)))
    return 0


def verify(ctx: Context) -> int:
    from ..transfer.check import check_bundle, inspect_bundle
    from .bundle_text import describe_signature, write_progress

    args, inv = ctx.args, ctx.caller
    with inv.input(args.file, check=inspect_bundle) as given:
        signers = inv.signers(args.allowed_signers)
        checked = check_bundle(
            given.path,
            progress=None if args.json else write_progress(label="verify"),
            allowed_signers=signers,
            require_signature=args.require_signature or inv.signatures_required,
            source=given.source,
        )
        info = checked.info
        ctx.emit(
            {**bundle_json(args.file, info), "ok": True, "sha256": checked.sha256, **signature_json(checked.signature)},
            f"{shown(args.file)}: ok ({len(info.parts)} streams, {info.file_size:,} bytes, every checksum matches, "
            f"each stream is the snapshot it claims); signature: {describe_signature(checked.signature)}",
        )
    return 0


def import_(ctx: Context) -> int:
    import attrs

    from ..transfer.check import inspect_bundle
    from ..transfer.importing import import_bundle
    from .bundle_text import write_progress

    args, inv = ctx.args, ctx.caller
    # Imported from root's own copy when the file is not root's (sudo.Invocation.input),
    # made only once its ends read as a bundle's.
    with inv.input(args.file, private=not args.dry_run, check=inspect_bundle) as given:
        if args.dry_run:
            return import_plan(ctx, given)
        signers = inv.signers(args.allowed_signers)
        progress = None if args.json else write_progress(label="import")
        mountpoint = inv.mountpoint(args.mountpoint)
        if inv.sudo:  # the owner given for the new repository is checked like begin's
            inv.owner(args.owner or str(inv.invoker), creating=True)
        result = import_bundle(
            given.path,
            args.into,
            mountpoint=mountpoint,
            zfs=ctx.zfs(),
            progress=progress,
            owner=args.owner,
            mode=args.mode,
            allowed_signers=signers,
            require_signature=args.require_signature or inv.signatures_required,
            audit_log=audit_log(args),
            check_streams=args.check_streams,
            policy=inv.policy,
            source=given.source,
        )
        signed = f", signed by {result.signer}" if result.signer else ""
        ctx.emit(
            attrs.asdict(result),
            shown(f"imported {result.kind} bundle into {result.repository}: {', '.join(result.snapshots)}{signed}"),
        )
    return 0


def import_plan(ctx: Context, given: Input) -> int:
    """``bundle import --dry-run``: the bundle checked as the import checks it, and the
    plan the import would run (``core.receive``), one line per step. Changes nothing."""
    from ..transfer.importing import plan_import

    args, inv = ctx.args, ctx.caller
    if inv.sudo:  # the owner given for the new repository is checked like begin's
        inv.owner(args.owner or str(inv.invoker), creating=True)
    steps = plan_import(
        given.path,
        args.into,
        mountpoint=inv.mountpoint(args.mountpoint),
        zfs=ctx.zfs(),
        owner=args.owner,
        mode=args.mode,
        allowed_signers=inv.signers(args.allowed_signers),
        require_signature=args.require_signature or inv.signatures_required,
        check_streams=args.check_streams,
        policy=inv.policy,
        source=given.source,
    )
    ctx.emit(steps, "\n".join(shown(step) for step in steps))
    return 0
