"""Commands for running dsg-storage for years: ``prune``, ``keep``, ``metrics``,
``install-hooks`` and ``cache``. ``commands`` hands them their args (``parser`` has their
arguments)."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

from ..core.periods import PERIODS  # for the parser, without the retention rules
from ..errors import InvalidArgumentError, NotAllowedError
from ..present import shown

# Each command imports what it uses inside its function (see commands.py).
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    from ..core.prune import PruneResult
    from ..zfs.allow import AllowList
    from .invocation import Caller

COMMANDS = ("prune", "keep", "metrics", "install-hooks", "cache")
if TYPE_CHECKING:
    Emit = Callable[[argparse.Namespace, Any, str], None]


def run(args: argparse.Namespace, allow: AllowList, emit: Emit, inv: Caller) -> int:
    if inv.sudo and args.command in ("install-hooks", "cache"):
        # Hooks are programs root runs later, the cache a file of root's: neither is the
        # caller's to write through sudo (the policy grants transactions on repositories).
        raise NotAllowedError(f"'{args.command}' is not available through sudo: run it as root")
    if args.command == "prune":
        return _prune(args, allow, emit, inv)
    if args.command == "keep":
        from ..core.prune import mark_keep
        from ..core.repository import Repository

        repo = Repository(args.repo, allow=allow, policy=inv.policy)
        name = mark_keep(repo, args.commit, keep=not args.remove)
        emit(
            args,
            {"snapshot": name, "keep": not args.remove},
            f"{shown(name)}: {'unmarked' if args.remove else 'kept by every prune'}",
        )
        return 0
    if args.command == "metrics":
        return _metrics(args, allow, emit, inv)
    if args.command == "install-hooks":
        return _install_hooks(args, allow, emit)
    return _cache(args, emit)


def _prune(args: argparse.Namespace, allow: AllowList, emit: Emit, inv: Caller) -> int:
    from ..core.prune import prune, save_policy
    from ..core.repository import Repository
    from ..core.retention import RetentionPolicy

    rules = {"last": args.keep_last, **{period: getattr(args, f"keep_{period}") for period in PERIODS}}
    policy = RetentionPolicy(**rules) if any(rules.values()) else None  # checked before any ZFS call
    # The sudo policy checks what recovery (prune's first step) reads from the pool.
    repo = Repository(args.repo, allow=allow, policy=inv.policy)
    if args.save_policy:
        if policy is None:
            raise InvalidArgumentError("--save-policy needs --keep-* rules to save")
        if not args.dry_run:
            save_policy(repo, policy)
    result = prune(repo, policy, dry_run=args.dry_run)
    emit(args, _prune_json(result), "\n".join(_prune_lines(result)))
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


def _metrics(args: argparse.Namespace, allow: AllowList, emit: Emit, inv: Caller) -> int:
    under = args.under or list(allow.prefixes)
    if not under:
        raise InvalidArgumentError("say which repositories to report: --under DATASET, --allow or $DSG_STORAGE_ALLOW")
    from .. import metrics
    from ..queue import Queue
    from ..zfs.boundary import open_zfs

    # Through sudo each --under must be allowed by the policy (_check_sudo) and by
    # --allow, the textfile is an output file like -o's (checked against [output] under
    # before anything is read, written as the invoking user), and the queue's counts
    # are of the items of allowed datasets.
    if inv.sudo:
        for prefix in under:
            allow.check(prefix)
    out = inv.output(metrics.textfile_path(args.textfile), force=True) if args.textfile and inv.sudo else None
    with Queue() as queue:
        facts = metrics.gather(queue, open_zfs(allow), under, only=allow.allows if inv.sudo else None)
    if out is not None:
        path = metrics.write_output(facts, out)
        emit(args, {"file": path}, path)
    elif args.textfile:
        path = metrics.write_textfile(facts, args.textfile)
        emit(args, {"file": path}, shown(path))
    else:
        sys.stdout.write(metrics.render(facts))
    return 0


def _install_hooks(args: argparse.Namespace, allow: AllowList, emit: Emit) -> int:
    import shlex

    import attrs

    from .. import hooks

    command = shlex.split(args.hook_command) if args.hook_command else hooks.default_command()
    env = hooks.carried_env(os.environ, ",".join(allow.prefixes) or None)
    files = hooks.render(command, env)
    if args.print or not (args.zedlet_dir or args.systemd_dir):
        if args.json:
            emit(args, [attrs.asdict(f) for f in files], "")
        else:
            for hook in files:
                print(f"# ---- {hook.name} ({hook.kind}, mode {hook.mode:o})\n{hook.content}")
        return 0
    written = hooks.install(files, zedlet_dir=args.zedlet_dir, systemd_dir=args.systemd_dir)
    emit(args, {"installed": written}, "\n".join(shown(path) for path in written))
    return 0


def _cache(args: argparse.Namespace, emit: Emit) -> int:
    import attrs

    from ..read.cache import ENV as CACHE_ENV
    from ..read.cache import ReadCache

    path = args.cache or os.environ.get(CACHE_ENV)
    if not path:
        raise InvalidArgumentError(f"which read cache? --cache FILE or ${CACHE_ENV}")
    cache = ReadCache(path)
    try:
        if args.cache_command == "stats":
            stats = cache.stats()
            kinds = " ".join(f"{k}={v}" for k, v in stats.entries.items()) or "empty"
            emit(
                args,
                attrs.asdict(stats),
                shown(
                    f"{stats.path}: {kinds}; oldest {stats.oldest or '-'}, newest {stats.newest or '-'}; "
                    f"{stats.file_bytes} bytes"
                ),
            )
        else:
            count = cache.clear(args.kind)
            emit(
                args, {"path": str(cache.path), "cleared": count}, shown(f"{cache.path}: {count} cached reads cleared")
            )
    finally:
        cache.close()
    return 0
