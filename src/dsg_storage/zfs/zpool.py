"""The ZFS boundary, pool level: finding, importing and exporting pools (``zpool``).

libzfs_core has no import, export or device scan, so these run the ``zpool`` command
(justified in ``_zfs``'s table). Imports made here are always read-only, never write a
cache file, and never mount anything: the callers mount what they read, read-only.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import attrs

from .. import _log
from ..errors import (
    InvalidArgumentError,
    PoolForeignError,
    PoolNotFoundError,
    PoolOpenError,
    ZfsUnavailableError,
)

log = _log.getLogger("dsg_storage")


@attrs.frozen
class FoundPool:
    """An exported pool ``zpool import`` found on the search paths."""

    name: str  # its name on disk
    guid: int
    state: str  # ONLINE, DEGRADED, UNAVAIL, FAULTED...
    status: str  # zpool's "status:" paragraph ("" when none)
    action: str
    config: str  # the device tree, as zpool prints it

    @property
    def foreign(self) -> bool:
        """Last used (and not exported) by another host: importing needs -f."""
        return "another system" in self.status

    @property
    def importable(self) -> bool:
        return self.state in ("ONLINE", "DEGRADED") and "cannot be imported" not in self.action

    def problem_devices(self) -> list[str]:
        """Device lines of the config that are not ONLINE (missing, damaged...)."""
        lines = []
        for line in self.config.splitlines():
            fields = line.split()
            grouping = re.fullmatch(
                r"(mirror|raidz[0-9]?|draid\S*|spare|logs|cache)(-[0-9]+)?", fields[0] if fields else ""
            )
            if len(fields) >= 2 and fields[1] not in ("ONLINE", "STATE") and fields[0] != self.name and not grouping:
                lines.append(" ".join(fields))
        return lines


@attrs.frozen
class ImportedPool:
    name: str
    guid: int | None  # None while the pool is not loaded (being imported or created, or faulted)
    health: str
    altroot: str | None
    readonly: bool
    devices: tuple[str, ...]  # vdev paths


def split_search_paths(paths: str | Sequence[str] | None) -> list[str]:
    """``"a:b"``, ``["a", "b:c"]`` or None (the default search) to a list of paths."""
    if paths is None:
        return []
    items = [paths] if isinstance(paths, str) else list(paths)
    out = [p for item in items for p in item.split(":") if p]
    for path in out:
        if not os.path.isabs(path):
            raise InvalidArgumentError(f"search path {path!r} is not absolute")
    return out


def _zpool(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    executable = shutil.which("zpool")
    if executable is None:
        raise ZfsUnavailableError("the 'zpool' command is missing", hint="install zfsutils-linux")
    started = time.monotonic()
    result = subprocess.run([executable, *args], capture_output=True, text=True, check=False)
    log.debug("zpool %s: %.0f ms (exit %d)", " ".join(args), (time.monotonic() - started) * 1000, result.returncode)
    if check and result.returncode != 0:
        raise PoolOpenError(f"zpool {' '.join(args)}: {_one_line(result.stderr) or f'exit {result.returncode}'}")
    return result


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _search_args(paths: Sequence[str]) -> list[str]:
    return [arg for path in paths for arg in ("-d", path)]


def find_pools(paths: Sequence[str]) -> list[FoundPool]:
    """Exported pools on ``paths`` (all of them when empty: zpool's default search)."""
    out = _zpool("import", *_search_args(paths), check=False).stdout
    return parse_import_listing(out)


def parse_import_listing(text: str) -> list[FoundPool]:
    """Parse ``zpool import``'s listing (one block per pool, "  pool: NAME" first)."""
    pools = []
    for block in re.split(r"\n(?=\s*pool: )", text):
        fields: dict[str, str] = {}
        key = None
        for line in block.splitlines():
            match = re.fullmatch(r"\s*(pool|id|state|status|action|see|config):\s?(.*)", line)
            if match:
                key = match.group(1)
                fields[key] = match.group(2)
            elif key is not None:
                fields[key] += "\n" + line
        if "pool" in fields and "id" in fields:
            pools.append(
                FoundPool(
                    name=fields["pool"].strip(),
                    guid=int(fields["id"].strip()),
                    state=fields.get("state", "").strip(),
                    status=_one_line(fields.get("status", "")),
                    action=_one_line(fields.get("action", "")),
                    config=fields.get("config", "").strip("\n"),
                )
            )
    return pools


def parse_pool_list(text: str) -> dict[str, ImportedPool]:
    """``zpool list -H -p -o name,guid,health,altroot`` by name. A pool another process is
    importing or creating right now is listed before it is loaded, with ``-`` for its
    guid: it is kept, with no guid, rather than failing every reader of the listing."""
    pools: dict[str, ImportedPool] = {}
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) != 4 or not fields[0] or not re.fullmatch(r"[0-9]+|-", fields[1]):
            raise PoolOpenError(f"zpool list printed a line this version cannot read: {line[:200]!r}")
        name, guid, health, altroot = fields
        pools[name] = ImportedPool(
            name, None if guid == "-" else int(guid), health, None if altroot == "-" else altroot, False, ()
        )
    return pools


def imported_pools() -> dict[str, ImportedPool]:
    """Pools imported on this host, by name, with their device paths."""
    listing = _zpool("list", "-H", "-p", "-o", "name,guid,health,altroot", check=False)
    if listing.returncode != 0:
        return {}
    pools = parse_pool_list(listing.stdout)
    if not pools:
        return pools
    devices: dict[str, list[str]] = {name: [] for name in pools}
    current = None
    for line in _zpool("list", "-H", "-v", "-P", check=False).stdout.splitlines():
        if not line.startswith("\t"):
            current = line.split("\t")[0]
        elif current in devices and line.strip().startswith("/"):
            devices[current].append(line.strip().split("\t")[0])
    readonly = _zpool("get", "-H", "-o", "name,value", "readonly", check=False).stdout
    ro = {ln.split("\t")[0] for ln in readonly.splitlines() if ln.endswith("\ton")}
    return {n: attrs.evolve(p, devices=tuple(devices[n]), readonly=n in ro) for n, p in pools.items()}


def import_readonly(pool: FoundPool, paths: Sequence[str], altroot: str, temp_name: str | None) -> str:
    """Import ``pool`` read-only (no mounts, no cache file) under ``altroot``; returns the
    name it is imported as. ``temp_name`` keeps the on-disk name untouched (``-t``)."""
    args = ["import", "-o", "readonly=on", "-o", "cachefile=none", "-N", "-R", altroot, *_search_args(paths)]
    if temp_name:
        args += ["-t", str(pool.guid), temp_name]
    else:
        args.append(str(pool.guid))
    result = _zpool(*args, check=False)
    if result.returncode != 0:
        reason = _one_line(result.stderr) or f"exit {result.returncode}"
        cls = PoolForeignError if "another system" in reason else PoolOpenError
        raise cls(f"cannot import pool {pool.name} read-only: {reason}", dataset=pool.name)
    return temp_name or pool.name


def export(name: str) -> None:
    """Export a pool this process imported (nothing of it may be mounted any more)."""
    _zpool("export", name)


def explain_not_found(paths: Sequence[str]) -> PoolNotFoundError:
    """The error for "no pool at these paths", saying what each path is."""
    if not paths:
        return PoolNotFoundError("no exported ZFS pool found by the default device search")
    details = []
    for path in paths:
        p = Path(path)
        if not p.exists():
            details.append(f"{path} does not exist")
        elif p.is_dir():
            details.append(f"{path}: no device or file in it carries a ZFS pool label")
        else:
            details.append(f"{path}: no valid ZFS label (not a pool device, or its labels are damaged)")
    return PoolNotFoundError(
        "no exported ZFS pool found: " + "; ".join(details),
        hint="check the paths; a pool already imported elsewhere must be exported there first",
    )
