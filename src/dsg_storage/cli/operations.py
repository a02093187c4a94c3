"""Commands for running dsg-storage for years: ``prune``, ``keep``, ``metrics``,
``install-hooks`` and ``cache stats|clear``. Each handler imports what it uses inside
its function (see ``commands``)."""

from __future__ import annotations

from ..core.periods import PERIODS  # for the parser, without the retention rules
from ..errors import InvalidArgumentError, NotAllowedError
from ..present import shown

TYPE_CHECKING = False  # not typing's: see dsg_storage/__init__.py
if TYPE_CHECKING:
    from typing import Any

    from ..core.prune import PruneResult
    from ..read.cache import ReadCache
    from .context import Context


def _root_only(ctx: Context) -> None:
    if ctx.caller.sudo:
        # Hooks are programs root runs later, the cache a file of root's: neither is the
        # caller's to write through sudo (the policy grants transactions on repositories).
        raise NotAllowedError(f"'{ctx.args.command}' is not available through sudo: run it as root")


def keep(ctx: Context) -> int:
    from ..core.prune import mark_keep

    args = ctx.args
    name = mark_keep(ctx.repository(args.repo), args.commit, keep=not args.remove)
    ctx.emit(
        {"snapshot": name, "keep": not args.remove},
        f"{shown(name)}: {'unmarked' if args.remove else 'kept by every prune'}",
    )
    return 0


def prune(ctx: Context) -> int:
    from ..core.prune import prune, save_policy
    from ..core.retention import RetentionPolicy

    args = ctx.args
    rules = {"last": args.keep_last, **{period: getattr(args, f"keep_{period}") for period in PERIODS}}
    policy = RetentionPolicy(**rules) if any(rules.values()) else None  # checked before any ZFS call
    # The sudo policy checks what recovery (prune's first step) reads from the pool.
    repo = ctx.repository(args.repo, reads_only=args.dry_run)  # a dry run never loads libzfs_core
    if args.save_policy:
        if policy is None:
            raise InvalidArgumentError("--save-policy needs --keep-* rules to save")
        if not args.dry_run:
            save_policy(repo, policy)
    result = prune(repo, policy, dry_run=args.dry_run)
    ctx.emit(_prune_json(result), "\n".join(_prune_lines(result)))
    return 0


def _prune_json(result: PruneResult) -> dict[str, Any]:
    return {
        "repository": result.repository,
        "dry_run": result.dry_run,
        "policy": result.plan.policy.as_dict(),
        "keep": [
            {"snapshot": d.snapshot, "committed": d.committed, "reasons": list(d.reasons)} for d in result.plan.keep
        ],
        "destroy": result.plan.destroy,
        "destroyed": list(result.destroyed),
        "skipped": dict(result.skipped),
        "steps": list(result.steps),
    }


def _prune_lines(result: PruneResult) -> list[str]:
    lines = [f"policy: {result.plan.policy.format()}"]
    for decision in result.plan.decisions:
        snapshot = shown(decision.snapshot)
        if decision.keep:
            lines.append(f"keep\t{snapshot}\t{shown(', '.join(decision.reasons))}")
        elif result.dry_run:
            lines.append(f"would destroy\t{snapshot}")
        elif decision.snapshot in result.skipped:
            lines.append(f"skipped\t{snapshot}\t{shown(str(result.skipped[decision.snapshot]))}")
        else:
            lines.append(f"destroyed\t{snapshot}")
    return lines


def metrics(ctx: Context) -> int:
    args, allow, inv = ctx.args, ctx.allow, ctx.caller
    under = args.under or list(allow.prefixes)
    if not under:
        raise InvalidArgumentError("say which repositories to report: --under DATASET, --allow or $DSG_STORAGE_ALLOW")
    from .. import metrics

    # Through sudo each --under must be allowed by the policy (_check_sudo) and by
    # --allow, the textfile is an output file like -o's (checked against [output] under
    # before anything is read, written as the invoking user), and the queue's counts
    # are of the items of allowed datasets.
    if inv.sudo:
        for prefix in under:
            allow.check(prefix)
    out = inv.output(metrics.textfile_path(args.textfile), force=True) if args.textfile and inv.sudo else None
    with ctx.queue() as queue:
        facts = metrics.gather(queue, ctx.zfs(), under, only=allow.allows if inv.sudo else None)
    if out is not None:
        path = metrics.write_output(facts, out)
        ctx.emit({"file": path}, path)
    elif args.textfile:
        path = metrics.write_textfile(facts, args.textfile)
        ctx.emit({"file": path}, shown(path))
    else:
        ctx.stdout.write(metrics.render(facts))
    return 0


def install_hooks(ctx: Context) -> int:
    import shlex

    import attrs

    from .. import hooks

    _root_only(ctx)
    args = ctx.args
    command = shlex.split(args.hook_command) if args.hook_command else hooks.default_command()
    env = hooks.carried_env(dict(ctx.settings.carried), ",".join(ctx.allow.prefixes) or None)
    files = hooks.render(command, env)
    if args.print or not (args.zedlet_dir or args.systemd_dir):
        if args.json:
            ctx.emit([attrs.asdict(f) for f in files], "")
        else:
            for hook in files:
                print(f"# ---- {hook.name} ({hook.kind}, mode {hook.mode:o})\n{hook.content}", file=ctx.stdout)
        return 0
    written = hooks.install(files, zedlet_dir=args.zedlet_dir, systemd_dir=args.systemd_dir)
    ctx.emit({"installed": written}, "\n".join(shown(path) for path in written))
    return 0


def _cache(ctx: Context) -> ReadCache:
    """The read cache ``--cache`` or ``$DSG_STORAGE_CACHE`` names (root's own, not through sudo)."""
    from ..read.cache import ENV as CACHE_ENV
    from ..read.cache import ReadCache

    _root_only(ctx)
    path = ctx.args.cache or ctx.settings.cache_path
    if not path:
        raise InvalidArgumentError(f"which read cache? --cache FILE or ${CACHE_ENV}")
    return ReadCache(path)


def cache_stats(ctx: Context) -> int:
    import attrs

    cache = _cache(ctx)
    try:
        stats = cache.stats()
    finally:
        cache.close()
    kinds = " ".join(f"{k}={v}" for k, v in stats.entries.items()) or "empty"
    ctx.emit(
        attrs.asdict(stats),
        shown(
            f"{stats.path}: {kinds}; oldest {stats.oldest or '-'}, newest {stats.newest or '-'}; {stats.file_bytes} bytes"
        ),
    )
    return 0


def cache_clear(ctx: Context) -> int:
    cache = _cache(ctx)
    try:
        count = cache.clear(ctx.args.kind)
    finally:
        cache.close()
    ctx.emit({"path": str(cache.path), "cleared": count}, shown(f"{cache.path}: {count} cached reads cleared"))
    return 0
