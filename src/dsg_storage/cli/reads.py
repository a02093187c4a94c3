"""The read commands: ``repos``, ``history``, ``ls``, ``stat``, ``cat``.

Each reads live or, with ``--offline --search-path PATHS``, an exported pool imported
read-only for the call, and says how on stderr (``access: ...``) and in every ``--json``
record (``"access"``; ``"cached"``/``"cached_at"`` too when served from the read cache).
Each handler imports what it uses inside its function (see ``commands``).
"""

from __future__ import annotations

import contextlib

from ..errors import InvalidArgumentError
from ..present import shown

TYPE_CHECKING = False  # not typing's: see dsg_storage/__init__.py
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

    from ..read.reader import Reader
    from .context import Context


@contextlib.contextmanager
def _reader(ctx: Context, *, one_repository: bool = False) -> Iterator[Reader]:
    """The reader the flags ask for (live, offline, cached), its access said on stderr;
    ``one_repository``: the command reads one repository (``history``, ``ls``, ``stat``,
    ``cat``), whose lists (and whether it exists) live it takes from ``zfs`` commands,
    without loading libzfs_core (``Context.lists``); files are read through mounts."""
    from ..read.cache import ENV as CACHE_ENV
    from ..read.cache import ReadCache
    from ..read.reader import open_live

    args, inv = ctx.args, ctx.caller
    cache_path = inv.cache_path(args.cache or ctx.settings.cache_path)
    cache = ReadCache(cache_path, owner=inv.cache_owner) if cache_path else None
    if args.cached and cache is None:
        raise InvalidArgumentError(f"--cached needs a read cache: --cache FILE or ${CACHE_ENV}")
    if args.userland:
        from ..read.userland import open_userland

        if args.offline or args.cached or not args.search_path:
            raise InvalidArgumentError("--userland takes --search-path PATHS (and --pool, --force); not --offline")
        keys = _key_files(args.key_file or [])
        reader: Reader = open_userland(args.search_path, pool=args.pool, force=args.userland_force, keys=keys)
    elif args.offline:
        from ..read.offline import open_offline

        reader = open_offline(args.search_path, pool=args.pool, cache=cache, cached=args.cached)
    elif args.search_path or args.pool or args.cached:
        raise InvalidArgumentError("--search-path, --pool and --cached go with --offline")
    else:
        reader = open_live(cache=cache, zfs=ctx.lists() if one_repository else ctx.zfs())
    with reader:
        ctx.note(f"access: {shown(reader.describe())}")
        yield reader


def _key_files(given: list[str]) -> dict[str, bytes]:
    """``--key-file [ROOT=]FILE`` values as ``open_userland``'s keys (the files read here)."""
    from ..read.userland import read_key_file

    keys: dict[str, bytes] = {}
    for value in given:
        root, sep, path = value.partition("=")
        if not sep or root.startswith((".", "/")):  # no ROOT=: a path, perhaps holding '='
            root, path = "", value
        if root in keys:
            raise InvalidArgumentError(f"--key-file: two keys for {root or 'every encryption root'}")
        keys[root] = read_key_file(path)
    return keys


def _access(ctx: Context, reader: Reader, kind: str, key: str) -> dict[str, Any]:
    from ..read.reader import CachedReader

    freshness, age = reader.freshness(kind, key)
    fields: dict[str, Any] = {"access": reader.mode.value, "freshness": freshness, "age": round(age, 3)}
    if isinstance(reader, CachedReader):
        fields.update(cached=True, cached_at=reader.taken_at(kind, key))
        ctx.note(f"cached: taken at {shown(str(fields['cached_at']))}, {age:.0f}s ago")
    return fields


def history(ctx: Context) -> int:
    from ..read.reader import commit_to_json

    args = ctx.args
    with _reader(ctx, one_repository=True) as reader:
        commits = reader.history(args.repo)
        extra = _access(ctx, reader, "history", args.repo)
        ctx.emit(
            [{**commit_to_json(c), **extra} for c in commits],
            "\n".join(
                f"{shown(c.name)}\t{shown(c.committed)}\t{shown(c.tx)}\t{shown(c.message or '')}".rstrip()
                for c in commits
            ),
        )
    return 0


def repos(ctx: Context) -> int:
    import attrs

    args = ctx.args
    # Not one_repository: one history per repository, which through zfs commands would be
    # processes per repository; channel programs are cheaper there.
    with _reader(ctx) as reader:
        found = reader.repositories(args.under)
        extra = _access(ctx, reader, "repositories", args.under or str(reader.pool))
        ctx.emit(
            [{**attrs.asdict(r), **extra} for r in found],
            "\n".join(
                f"{shown(r.name)}\t{shown(r.mountpoint or '-')}\t{r.commits} commits\t{shown(r.last_commit or '-')}"
                for r in found
            ),
        )
    return 0


def ls(ctx: Context) -> int:
    args = ctx.args
    with _reader(ctx, one_repository=True) as reader:
        return _entries(ctx, reader, reader.files(args.repo, args.path, commit=args.commit), one=False)


def stat(ctx: Context) -> int:
    args = ctx.args
    with _reader(ctx, one_repository=True) as reader:
        return _entries(ctx, reader, [reader.stat(args.repo, args.path, commit=args.commit)], one=True)


def _entries(ctx: Context, reader: Reader, entries: list[Any], *, one: bool) -> int:
    from ..read.reader import entry_to_json

    fresh = reader.freshness("files", ctx.args.repo)[0]
    records = [{**entry_to_json(e), "access": reader.mode.value, "freshness": fresh, "age": 0.0} for e in entries]
    ctx.emit(
        records[0] if one else records,
        "\n".join(f"{e.type}\t{e.mode}\t{e.uid}:{e.gid}\t{e.size}\t{shown(e.path or '.')}" for e in entries),
    )
    return 0


def cat(ctx: Context) -> int:
    with _reader(ctx, one_repository=True) as reader:
        return _cat(ctx, reader)


def _cat(ctx: Context, reader: Reader) -> int:
    args = ctx.args
    data = reader.read(args.repo, args.path, commit=args.commit)
    mode = reader.mode.value
    if args.json:
        import base64
        import hashlib

        ctx.emit(
            {
                "access": mode,
                "path": args.path,
                "commit": args.commit,
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "content_base64": base64.b64encode(data).decode(),
            },
            "",
        )
    else:
        ctx.stdout.buffer.write(data)
        ctx.stdout.flush()
    return 0
