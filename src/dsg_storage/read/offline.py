"""Offline access: open an exported pool found on files or devices, strictly read-only.

    with open_offline("/backups/site-a.img") as reader:   # reader.mode is Mode.OFFLINE
        reader.history("tank/data/survey")

The pool is imported read-only (``readonly=on``), with no cache file, nothing mounted by
ZFS, under a private altroot, and under a temporary name when an imported pool already
has its name; what is read is mounted read-only at private directories. ``close``
unmounts all of it and exports the pool, only if we imported it. A pool that is already
imported is used as it is, through a read-only reader.

After a crash of the process: the pool stays imported read-only (nothing was or can be
written to it); ``zpool export NAME`` (the name ``describe()`` showed) releases it.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Sequence

from .. import _log
from ..errors import DsgStorageError, PoolForeignError, PoolNotFoundError, PoolOpenError
from ..zfs import zpool as _zpool
from ..zfs.allow import AllowList
from ..zfs.boundary import open_zfs
from .cache import ReadCache
from .reader import CachedReader, Mode, Reader

log = _log.getLogger("dsg_storage")


def open_offline(
    search_paths: str | Sequence[str] | None = None,
    *,
    pool: str | None = None,
    cache: ReadCache | None = None,
    cached: bool = False,
) -> Reader:
    """Open the exported pool found on ``search_paths`` (files, directories or devices; a
    colon-separated string is accepted, as ``zpool import -d`` takes them; None: the
    default device search) for reading. ``pool`` (name or numeric id) picks one when the
    paths hold several.

    Raises PoolNotFoundError (nothing found; with ``cached=True`` and a ``cache``, a
    CachedReader serving recorded reads is returned instead), PoolForeignError (last used
    by another host), PoolOpenError (devices missing beyond redundancy, several pools
    match...). Whatever is raised, nothing is left imported or mounted.
    """
    paths = _zpool.split_search_paths(search_paths)
    try:
        return _open(paths, pool)
    except PoolNotFoundError as exc:
        if cached and cache is not None:
            log.warning("%s; serving cached reads from %s", exc, cache.path)
            return CachedReader(cache, pool=pool, reason=str(exc.message))
        raise


def _open(paths: list[str], wanted: str | None) -> Reader:  # noqa: C901  one refusal per way a pool cannot open
    # A missing path is not an error by itself: a mirror opens without one of its disks.
    existing = [p for p in paths if os.path.exists(p)]
    if paths and not existing:
        raise _zpool.explain_not_found(paths)
    paths, asked = existing, paths
    imported = _zpool.imported_pools()
    reals = {os.path.realpath(p) for p in paths}
    for live in imported.values():
        known_as = (live.name,) if live.guid is None else (live.name, str(live.guid))
        if reals & {os.path.realpath(d) for d in live.devices} and (wanted is None or wanted in known_as):
            # Already imported here: read it as it is, never change it.
            return Reader(
                open_zfs(AllowList(()), read_only=True),
                mode=Mode.LIVE,
                pool=live.name,
                health=live.health,
                notes=("already imported; used as it is",),
            )
    found = [p for p in _zpool.find_pools(paths) if wanted in (None, p.name, str(p.guid))]
    if not found:
        raise _zpool.explain_not_found(asked)
    if len(found) > 1:
        listed = ", ".join(f"{p.name} (id {p.guid})" for p in found)
        raise PoolOpenError(f"several pools found: {listed}", hint="say which one with --pool NAME|ID")
    target = found[0]
    if target.foreign:
        raise PoolForeignError(
            f"pool {target.name} (id {target.guid}) was last used by another system and not exported there",
            dataset=target.name,
            hint="export it on that system first; dsg-storage never forces an import",
        )
    if not target.importable:
        problems = "; ".join(target.problem_devices()) or target.status
        raise PoolOpenError(
            f"pool {target.name} (id {target.guid}) cannot be opened: state {target.state}: {problems}",
            dataset=target.name,
            hint="attach the missing devices and retry",
        )
    temp_name = None
    if target.name in imported:
        temp_name = f"{target.name}-ro-{secrets.token_hex(3)}"
    altroot = tempfile.mkdtemp(prefix="dsg-storage-offline-")
    try:
        name = _zpool.import_readonly(target, paths, altroot, temp_name)
    except DsgStorageError:
        os.rmdir(altroot)
        raise
    notes = []
    if target.state == "DEGRADED":
        notes.append("devices missing: " + "; ".join(target.problem_devices()))
    try:
        if not _zpool.imported_pools()[name].readonly:  # never trust, check
            raise PoolOpenError(f"pool {name} was imported but is not read-only", dataset=name)
    except BaseException:
        _release(name, altroot)
        raise
    return Reader(
        open_zfs(AllowList(()), read_only=True),
        mode=Mode.OFFLINE,
        pool=target.name,
        imported_as=name,
        altroot=altroot,
        on_close=lambda: _release(name, altroot),
        health=target.state,
        notes=tuple(notes),
    )


def _release(name: str, altroot: str) -> None:
    """Unmount everything of pool ``name`` (ours, read-only) and export it."""
    zfs = open_zfs(AllowList(()), read_only=True)
    mounted = sorted(
        ((ds, p) for ds, paths in zfs.host.mounts().items() if ds.split("/")[0].split("@")[0] == name for p in paths),
        key=lambda item: len(item[1]),
        reverse=True,
    )
    for dataset, path in mounted:
        zfs.host.release_mount(dataset, path)
    _zpool.export(name)
    if os.path.isdir(altroot):
        os.rmdir(altroot)  # empty: ZFS mounted nothing there (-N); never rmtree near a pool
