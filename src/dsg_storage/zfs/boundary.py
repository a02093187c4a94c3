"""The ZFS boundary: the only module that imports ``libzfs_core`` or runs ``zfs``.

It speaks ``str`` (never bytes), raises dsg-storage's own errors (never pyzfs's), checks
the allow-list before every mutating call, and retries transient EBUSY.

What goes where, and why (the single list of non-libzfs_core calls):

============================  =====================================================
create, snapshot, clone,      libzfs_core (``lzc_*``): one ioctl each, no process
promote, rename, destroy,
holds, rollback
reads (properties, lists),    channel programs (``lzc_channel_program[_nosync]``):
user-property writes          pyzfs has no ``lzc_get_props``/``lzc_list``/``lzc_set_props``
mount / unmount               mount(2) / umount2(2) with the ``zfsutil`` option, the
                              same system calls ``zfs mount`` makes; libzfs_core has no
                              mount call
``zfs set mountpoint=``       native properties cannot be set through libzfs_core or a
                              channel program, and the repository's ``mountpoint``
                              must be a real property so it survives a reboot; run
                              only when the mountpoint is not inherited
``zfs set setuid=off``        the same, for a bundle import: what is received from
``devices=off``               somebody else never honours setuid bits or devices
``zfs diff``                  libzfs_core has no diff; run only when a commit finds the
                              repository written since begin (``written@base`` > 0),
                              to tell file changes from the metadata a mount writes
``zfs list -j``/``zfs get``   reads on a pool imported read-only: channel programs,
                              even ``nosync`` ones, refuse such a pool (EROFS)
``zpool import``/``export``   (``_zpool``) offline access: libzfs_core cannot scan
                              devices, import or export; imports are read-only,
                              with no cache file and nothing mounted
============================  =====================================================
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import attrs
import tenacity

from .._libc import libc
from ..core import names as _names
from ..core.allow import AllowList
from ..errors import (
    DatasetBusyError,
    DatasetExistsError,
    DatasetNotFoundError,
    DsgStorageError,
    InvalidNameError,
    NoSpaceError,
    PoolUnavailableError,
    ReadOnlyError,
    ZfsError,
    ZfsUnavailableError,
)

log = logging.getLogger("dsg_storage")
T = TypeVar("T")

INSTALL_HINT = (
    "install the OpenZFS Python bindings from your OS: 'apt-get install python3-pyzfs' on Debian/Ubuntu "
    "(PyPI's 'pyzfs' is an unrelated, obsolete package: do not use it)"
)
# canmount is an index property: the kernel takes its numeric value.
CANMOUNT_ON, CANMOUNT_NOAUTO = 1, 2
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
# A dataset's properties that ``zfs mount`` turns into mount(2) flags: the value that sets the flag.
_MOUNT_FLAG_PROPS = {
    "setuid": ("off", MS_NOSUID),
    "devices": ("off", MS_NODEV),
    "exec": ("off", MS_NOEXEC),
    "readonly": ("on", MS_RDONLY),
}


def load_libzfs_core() -> ModuleType:
    """Import libzfs_core, or explain in one error how to get it."""
    try:
        import libzfs_core  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:
        raise ZfsUnavailableError(f"libzfs_core cannot be imported ({exc})", hint=INSTALL_HINT) from exc
    if not hasattr(libzfs_core, "lzc_channel_program_nosync"):
        raise ZfsUnavailableError(
            f"the libzfs_core module at {getattr(libzfs_core, '__file__', '?')} is not OpenZFS's bindings",
            hint=INSTALL_HINT,
        )
    module: ModuleType = libzfs_core
    return module


@attrs.frozen
class Snapshot:
    """A snapshot as read from the pool."""

    name: str  # full name, dataset@short
    guid: int
    createtxg: int
    creation: int  # seconds since the epoch
    user_props: Mapping[str, str]

    @property
    def short_name(self) -> str:
        return self.name.split("@", 1)[1]


def _b(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


def u64(value: int) -> int:
    """nvlists hand uint64 values (GUIDs) to Lua and back as signed int64."""
    return int(value) & 0xFFFFFFFFFFFFFFFF


def _decode(value: Any) -> Any:
    """Channel-program results come back as nested dicts of bytes: make them str."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, dict):
        return {_decode(k): _decode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_decode(v) for v in value]
    return value


_LUA_PREAMBLE = """
local argv = (...)["argv"]
"""

# Read properties of several datasets at once: argv = {dataset, prop, prop, ...}.
_READ_PROPS = (
    _LUA_PREAMBLE
    + """
local ds = argv[1]
local out = {}
if not zfs.exists(ds) then return {exists = 0} end
for i = 2, #argv do
    local value, source = zfs.get_prop(ds, argv[i])
    if value ~= nil then out[argv[i]] = value end
end
return {exists = 1, props = out}
"""
)

_SNAPSHOTS = (
    _LUA_PREAMBLE
    + """
local out = {}
local n = 0
for snap in zfs.list.snapshots(argv[1]) do
    n = n + 1
    local user = {}
    for name, value, source in zfs.list.user_properties(snap) do
        -- only the snapshot's own: a snapshot also shows its dataset's user properties
        if source == snap and string.sub(name, 1, #argv[2]) == argv[2] then user[name] = value end
    end
    out[string.format("%08d", n)] = {
        name = snap,
        guid = zfs.get_prop(snap, "guid"),
        createtxg = zfs.get_prop(snap, "createtxg"),
        creation = zfs.get_prop(snap, "creation"),
        user = user,
    }
end
return out
"""
)

_CHILDREN = (
    _LUA_PREAMBLE
    + """
local out = {}
local n = 0
for child in zfs.list.children(argv[1]) do
    n = n + 1
    out[string.format("%08d", n)] = child
end
return out
"""
)

# Every filesystem at or under argv[1], with its own user properties under argv[2] and
# its mountpoint: the repository list.
_FILESYSTEMS = (
    _LUA_PREAMBLE
    + """
local out = {}
local function visit(ds)
    local props = {}
    for name, value, source in zfs.list.user_properties(ds) do
        if source == ds and string.sub(name, 1, #argv[2]) == argv[2] then props[name] = value end
    end
    props["mountpoint"] = zfs.get_prop(ds, "mountpoint")
    out[ds] = props
    for child in zfs.list.children(ds) do visit(child) end
end
if zfs.exists(argv[1]) then visit(argv[1]) end
return out
"""
)

# argv = {dataset, name, value, name, value, ...}; checked first so a bad one changes nothing.
# A batch of changes in one ZFS sync task (all or, for "T" ops, best effort). argv is a
# flat list of ops: S name (snapshot) | P fs (promote, if it is a clone) | D name (destroy) | T name (try to
# destroy; a failure is reported, not fatal) | V ds prop value (set a user property on an
# existing dataset) | N snap prop value (set a user property on a snapshot this batch
# creates) | U fs snapname (require fs unchanged since its snapshot) | A name (require
# name absent). Every op that can be checked is checked first, so a refused batch changes
# nothing; except promote, whose check walks every older snapshot (as long as the promote
# itself) and which zfs.sync.promote checks anyway: callers put it before any op whose
# partial effect would matter. Running in syncing context, the checks see every write made before the call.
# NOT atomic against signals: a caller killed while the program runs interrupts it after
# any op, keeping the ops already done. Callers order ops so every prefix is recoverable.
_BATCH = (
    _LUA_PREAMBLE
    + """
local ops = {}
local i = 1
while i <= #argv do
    local op = argv[i]
    if op == "V" or op == "N" then
        ops[#ops + 1] = {op, argv[i + 1], argv[i + 2], argv[i + 3]}
        i = i + 4
    elseif op == "U" then
        ops[#ops + 1] = {op, argv[i + 1], argv[i + 2]}
        i = i + 3
    else
        ops[#ops + 1] = {op, argv[i + 1]}
        i = i + 2
    end
end
for k = 1, #ops do
    local o = ops[k]
    local err = 0
    if o[1] == "S" then err = zfs.check.snapshot(o[2])
    elseif o[1] == "D" then err = zfs.check.destroy(o[2])
    elseif o[1] == "V" then err = zfs.check.set_prop(o[2], o[3], o[4])
    elseif o[1] == "A" and zfs.exists(o[2]) then err = 17
    elseif o[1] == "U" then
        local written = zfs.get_prop(o[2], "written@" .. o[3])
        if written ~= 0 then return {failed = k, err = 0, written = written} end
    end
    if err ~= 0 then return {failed = k, err = err} end
end
local skipped = {}
local created = {}
for k = 1, #ops do
    local o = ops[k]
    if o[1] == "S" then
        assert(zfs.sync.snapshot(o[2]) == 0)
        created[o[2]] = {guid = zfs.get_prop(o[2], "guid"), createtxg = zfs.get_prop(o[2], "createtxg")}
    elseif o[1] == "P" then
        if zfs.get_prop(o[2], "origin") ~= nil then assert(zfs.sync.promote(o[2]) == 0) end
    elseif o[1] == "D" then assert(zfs.sync.destroy(o[2]) == 0)
    elseif o[1] == "T" then
        local e = zfs.sync.destroy(o[2])
        if e ~= 0 then skipped[o[2]] = e end
    elseif o[1] == "V" or o[1] == "N" then assert(zfs.sync.set_prop(o[2], o[3], o[4]) == 0) end
end
return {failed = 0, skipped = skipped, created = created}
"""
)

# A dataset and its siblings whose names start with NAME.dsg- (dsg-storage's temporary
# datasets), each with the user properties under our prefix and its origin.
_FAMILY = (
    _LUA_PREAMBLE
    + """
local parent, name, prefix = argv[1], argv[2], argv[3]
local mark = name .. ".dsg-"
local out = {}
if not zfs.exists(parent) then return out end
for child in zfs.list.children(parent) do
    if child == name or string.sub(child, 1, #mark) == mark then
        local props = {}
        for prop, value, source in zfs.list.user_properties(child) do
            if source == child and string.sub(prop, 1, #prefix) == prefix then props[prop] = value end
        end
        local origin = zfs.get_prop(child, "origin")
        if origin ~= nil then props["origin"] = origin end
        props["mountpoint"] = zfs.get_prop(child, "mountpoint")
        out[child] = props
    end
end
out[parent] = {mountpoint = zfs.get_prop(parent, "mountpoint")}
return out
"""
)


@attrs.frozen
class BatchResult:
    skipped: dict[str, int]  # optional destroys that failed: name -> errno
    created: dict[str, tuple[int, int]]  # snapshots made: name -> (guid, createtxg)


@attrs.define
class Batch:
    """Changes to apply in one ZFS sync task (see ``Zfs.apply``)."""

    ops: list[str] = attrs.Factory(list)
    targets: list[str] = attrs.Factory(list)

    def snapshot(self, name: str, props: Mapping[str, str] | None = None) -> Batch:
        self._add(name, "S", name)
        for key, value in (props or {}).items():
            self.ops += ["N", name, key, value]
        return self

    def set(self, dataset: str, props: Mapping[str, str]) -> Batch:
        for key, value in props.items():
            self._add(dataset, "V", dataset, key, value)
        return self

    def promote(self, filesystem: str) -> Batch:
        """Promote ``filesystem`` if it is a clone (so a repeated batch is harmless)."""
        return self._add(filesystem, "P", filesystem)

    def destroy(self, name: str, *, required: bool = True) -> Batch:
        return self._add(name, "D" if required else "T", name)

    def require_unchanged(self, filesystem: str, snapshot: str) -> Batch:
        """Refuse the batch (DatasetChangedError) if ``filesystem`` was written after
        ``snapshot`` (its short name)."""
        return self._add(filesystem, "U", filesystem, snapshot)

    def require_absent(self, name: str) -> Batch:
        """Refuse the batch (DatasetExistsError) if ``name`` exists."""
        return self._add(name, "A", name)

    def _add(self, target: str, *op: str) -> Batch:
        self.targets.append(target)
        self.ops += op
        return self


class DatasetChangedError(ZfsError):
    """A batch required a filesystem unchanged since a snapshot, and it was not."""

    def __init__(self, message: str, *, dataset: str, written: int) -> None:
        super().__init__(message, dataset=dataset)
        self.written = written


def zfs_version() -> str:
    """The loaded ZFS kernel module's version, e.g. "2.3.9-1"."""
    try:
        return Path("/sys/module/zfs/version").read_text().strip()
    except OSError:
        return "unknown"


def _own_props(local: Mapping[str, Any], name: str, prefix: str) -> dict[str, str]:
    """From ``zfs get -j -s local`` output: ``name``'s own properties starting with ``prefix``."""
    found = (local.get(name) or {}).get("properties") or {}
    return {key: str(prop["value"]) for key, prop in found.items() if key.startswith(prefix)}


class _PoolReadOnly(Exception):
    """A channel program was refused because the pool is imported read-only."""


class _Libc:
    def __init__(self) -> None:
        self.lib = libc()
        self.lib.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
        self.lib.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]

    def mount(
        self, source: str, target: str, fstype: str, data: str, *, readonly: bool = False, flags: int = 0
    ) -> None:
        flags |= MS_RDONLY if readonly else 0
        if self.lib.mount(source.encode(), target.encode(), fstype.encode(), flags, data.encode()) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), target)

    def die_with_parent(self) -> None:
        """In a child process: get SIGKILL when the parent dies (prctl PR_SET_PDEATHSIG)."""
        self.lib.prctl(1, signal.SIGKILL, 0, 0, 0)

    def umount(self, target: str) -> None:
        if self.lib.umount2(target.encode(), 0) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), target)


def _unescape_mountinfo(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def _zfs_mount_entries() -> Iterator[tuple[str, str]]:
    """(dataset, mount path) of every mounted ZFS filesystem, in mountinfo order (a
    stack of mounts at one path is listed bottom first)."""
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            if rfields and rfields[0] == "zfs":
                yield _unescape_mountinfo(rfields[1]), _unescape_mountinfo(fields[4])


def zfs_mounts() -> dict[str, list[str]]:
    """Mounted ZFS filesystems: dataset -> mount paths (several when stacked)."""
    mounts: dict[str, list[str]] = {}
    for dataset, path in _zfs_mount_entries():
        mounts.setdefault(dataset, []).append(path)
    return mounts


def mount_stack(path: str) -> list[str]:
    """Sources of the ZFS mounts at exactly ``path``, bottom first."""
    return [dataset for dataset, mounted in _zfs_mount_entries() if mounted == path]


def holders_of(path: str) -> list[str]:
    """Processes whose cwd, root or open files are at or under ``path`` ("pid (comm)")."""
    found = []
    prefix = path.rstrip("/") + "/"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            links = [entry / "cwd", entry / "root", *(entry / "fd").iterdir()]
            targets = [os.readlink(link) for link in links]
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue  # the process ended or is not ours to inspect
        if any(t == path or t.startswith(prefix) for t in targets):
            found.append(f"{entry.name} ({comm})")
    return found


class Zfs:
    """libzfs_core and the few system calls around it, in dsg-storage's terms.

    ``allow`` confines every mutating call; ``busy_timeout`` bounds the retries of
    transient EBUSY (unmount, destroy); ``sleep`` is injectable so tests never wait.
    ``read_only`` refuses every mutating call with ReadOnlyError (offline access).
    """

    def __init__(
        self,
        allow: AllowList,
        *,
        busy_timeout: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
        lzc: ModuleType | None = None,
        read_only: bool = False,
    ) -> None:
        self.allow = allow
        self.read_only = read_only
        self.busy_timeout = busy_timeout
        self.sleep = sleep
        self.lzc = lzc or load_libzfs_core()
        from libzfs_core import exceptions as lzc_exceptions  # type: ignore[import-not-found,unused-ignore]

        self._lzc_errors = lzc_exceptions
        self._libc = _Libc()

    # ------------------------------------------------------------------ error mapping
    def _translate(self, exc: Exception, dataset: str) -> DsgStorageError:
        errors = getattr(exc, "errors", None)
        if errors:  # pyzfs aggregates (SnapshotFailure...) carry one error per target
            exc = errors[0]
        code = getattr(exc, "errno", None)
        text = f"{type(exc).__name__}: {getattr(exc, 'message', None) or exc}"
        cls: type[DsgStorageError] = {
            errno.ENOENT: DatasetNotFoundError,
            errno.EEXIST: DatasetExistsError,
            errno.EBUSY: DatasetBusyError,
            errno.ENOSPC: NoSpaceError,
            errno.EDQUOT: NoSpaceError,
            errno.ENXIO: PoolUnavailableError,
            errno.EIO: PoolUnavailableError,
            errno.ENAMETOOLONG: InvalidNameError,
        }.get(code or 0, ZfsError)
        if isinstance(exc, self._lzc_errors.NameInvalid | self._lzc_errors.NameTooLong):
            cls = InvalidNameError
        if isinstance(exc, self._lzc_errors.PoolNotFound):
            cls = PoolUnavailableError
        return cls(f"{dataset}: {text}", dataset=dataset)

    def _call(self, dataset: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except self._lzc_errors.ZFSError as exc:
            raise self._translate(exc, dataset) from exc

    def _retry_busy(self, dataset: str, what: str, fn: Callable[[], T], mount_path: str | None = None) -> T:
        """Run ``fn``; while it fails with EBUSY retry with backoff, at most ``busy_timeout`` s."""
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(lambda e: isinstance(e, DatasetBusyError)),
            stop=tenacity.stop_after_delay(self.busy_timeout),
            wait=tenacity.wait_exponential(multiplier=0.02, max=0.5),
            sleep=self.sleep,
            reraise=True,
        )
        try:
            return retrying(fn)
        except DatasetBusyError as exc:
            holders = holders_of(mount_path) if mount_path else []
            held = f"; in use by {', '.join(holders)}" if holders else ""
            raise DatasetBusyError(
                f"cannot {what} {dataset}: still busy after {self.busy_timeout:g}s{held}",
                dataset=dataset,
                hint="close what uses it and retry",
            ) from exc

    def _check(self, *datasets: str) -> None:
        if self.read_only:
            raise ReadOnlyError(
                f"{datasets[0] if datasets else 'the pool'} is opened read-only (offline access): nothing can change",
                dataset=datasets[0] if datasets else None,
            )
        for dataset in datasets:
            self.allow.check(dataset)

    # ------------------------------------------------------------------ reads
    def exists(self, name: str) -> bool:
        return bool(self._call(name, self.lzc.lzc_exists, _b(name)))

    def program(self, pool: str, source: str, args: Sequence[str], *, sync: bool) -> Any:
        """Run a channel program (Lua) on ``pool``; returns its decoded return value.

        Callers of a ``sync`` (changing) program check the allow-list for its targets.
        """
        fn = self.lzc.lzc_channel_program if sync else self.lzc.lzc_channel_program_nosync
        params = [_b(a) for a in args]
        try:
            # pyzfs hands back the program's return value itself (already unwrapped).
            return _decode(fn(_b(pool), _b(source), params=params))
        except self._lzc_errors.ZFSError as exc:
            if getattr(exc, "errno", None) == errno.EROFS:
                raise _PoolReadOnly(pool) from exc
            raise self._translate(exc, args[0] if args else pool) from exc

    def get_props(self, dataset: str, names: Iterable[str]) -> dict[str, Any] | None:
        """Properties of ``dataset`` (native or user) that are set; None if it does not exist."""
        result = self.program(_names.pool_of(dataset), _READ_PROPS, [dataset, *names], sync=False)
        if not result or not result.get("exists"):
            return None
        return dict(result.get("props") or {})

    def snapshots(self, dataset: str, user_prefix: str = _names.PROP_PREFIX) -> list[Snapshot]:
        """Snapshots of ``dataset`` in creation order, with our user properties."""
        try:
            raw = self.program(_names.pool_of(dataset), _SNAPSHOTS, [dataset, user_prefix], sync=False) or {}
        except _PoolReadOnly:
            raw = self._snapshots_cli(dataset, user_prefix)
        snaps = [
            Snapshot(
                name=item["name"],
                guid=u64(item["guid"]),
                createtxg=int(item["createtxg"]),
                creation=int(item["creation"]),
                user_props=dict(item.get("user") or {}),
            )
            for item in raw.values()
        ]
        return sorted(snaps, key=lambda s: s.createtxg)

    def _snapshots_cli(self, dataset: str, user_prefix: str) -> dict[str, Any]:
        listed = self._zfs_json("list", "-t", "snapshot", "-d", "1", "-o", "name,guid,createtxg,creation", dataset)
        local = self._zfs_json("get", "-t", "snapshot", "-d", "1", "-s", "local", "all", dataset)
        return {
            name: {
                **{key: info["properties"][key]["value"] for key in ("guid", "createtxg", "creation")},
                "name": name,
                "user": _own_props(local, name, user_prefix),
            }
            for name, info in listed.items()
        }

    def filesystems(self, under: str, user_prefix: str = _names.PROP_PREFIX) -> dict[str, dict[str, str]]:
        """``under`` and every filesystem below it: their own user properties under
        ``user_prefix`` and ``mountpoint`` (as the pool reports it). Empty if absent."""
        try:
            raw = self.program(_names.pool_of(under), _FILESYSTEMS, [under, user_prefix], sync=False) or {}
            return {name: {k: str(v) for k, v in props.items()} for name, props in raw.items()}
        except _PoolReadOnly:
            pass
        listed = self._zfs_json("list", "-r", "-t", "filesystem", "-o", "name,mountpoint", under, missing_ok=True)
        local = self._zfs_json("get", "-r", "-t", "filesystem", "-s", "local", "all", under, missing_ok=True)
        return {
            name: {**_own_props(local, name, user_prefix), "mountpoint": str(info["properties"]["mountpoint"]["value"])}
            for name, info in listed.items()
        }

    def _zfs_json(self, *args: str, missing_ok: bool = False) -> dict[str, Any]:
        """``zfs list|get -j -p ...``: datasets by name, values as strings (not --json-int:
        OpenZFS 2.3 clamps it at 2**63-1, which garbles GUIDs)."""
        try:
            out = self._zfs_command(args[0], "-j", "-p", *args[1:])
        except DatasetNotFoundError:
            if missing_ok:
                return {}
            raise
        datasets: dict[str, Any] = json.loads(out).get("datasets") or {}
        return datasets

    def children(self, dataset: str) -> list[str]:
        raw = self.program(_names.pool_of(dataset), _CHILDREN, [dataset], sync=False) or {}
        return [raw[k] for k in sorted(raw)]

    # ------------------------------------------------------------------ writes
    def create(self, name: str, props: Mapping[str, str | int] | None = None) -> None:
        self._check(name)
        self._call(name, self.lzc.lzc_create, _b(name), "zfs", self._props(props))

    def snapshot(self, names: Sequence[str], props: Mapping[str, str] | None = None) -> None:
        """Atomically create ``names`` (all in one pool) with the given user properties."""
        self._check(*names)
        self._call(names[0], self.lzc.lzc_snapshot, [_b(n) for n in names], self._props(props))

    def clone(self, name: str, origin: str, props: Mapping[str, str | int] | None = None) -> None:
        self._check(name)
        self._call(name, self.lzc.lzc_clone, _b(name), _b(origin), self._props(props))

    def promote(self, name: str) -> None:
        self._check(name)
        self._call(name, self.lzc.lzc_promote, _b(name))

    def rename(self, source: str, target: str) -> None:
        self._check(source, target)
        self._call(source, self.lzc.lzc_rename, _b(source), _b(target))

    def destroy(self, name: str) -> None:
        """Destroy a filesystem (unmounting it first) or a snapshot; retried while busy."""
        self._check(name)
        if "@" in name:
            self.destroy_snapshots([name])
            return
        paths = zfs_mounts().get(name, [])
        for path in reversed(paths):
            self.unmount(name, path)
        self._retry_busy(name, "destroy", lambda: self._call(name, self.lzc.lzc_destroy, _b(name)), None)

    def destroy_with_snapshots(self, filesystem: str) -> None:
        """Destroy ``filesystem`` and its snapshots (it must have no children)."""
        self.destroy_snapshots([s.name for s in self.snapshots(filesystem)])
        self.destroy(filesystem)

    def rollback(self, filesystem: str) -> None:
        """Roll ``filesystem`` back to its latest snapshot (works while mounted)."""
        self._check(filesystem)
        self._call(filesystem, self.lzc.lzc_rollback, _b(filesystem))

    def send_to(self, fd: int, snapshot: str, from_snapshot: str | None = None) -> None:
        """Write the send stream of ``snapshot`` (incremental from ``from_snapshot``) to the
        file ``fd`` at its current offset; ZFS writes it in the kernel, at full speed."""
        self._call(snapshot, self.lzc.lzc_send, _b(snapshot), _b(from_snapshot) if from_snapshot else None, fd, None)

    def send_space(self, snapshot: str, from_snapshot: str | None = None) -> int:
        """ZFS's estimate of the size of ``snapshot``'s send stream, in bytes."""
        return int(
            self._call(snapshot, self.lzc.lzc_send_space, _b(snapshot), _b(from_snapshot) if from_snapshot else None)
        )

    def receive_from(self, fd: int, snapshot: str, *, force: bool = False) -> None:
        """Receive the send stream read from the file ``fd`` at its current offset as
        ``snapshot``; ZFS stops at the stream's end. All or nothing: a stream that fails
        (damaged, cut short, wrong base) leaves nothing received. ``force`` rolls the
        target back to its latest snapshot first (``zfs receive -F``)."""
        self._check(snapshot.split("@", 1)[0])
        self._call(snapshot, self.lzc.lzc_receive, _b(snapshot), fd, force=force)

    def destroy_snapshots(self, names: Sequence[str]) -> None:
        if not names:
            return
        self._check(*names)
        self._retry_busy(
            names[0],
            "destroy",
            lambda: self._call(names[0], self.lzc.lzc_destroy_snaps, [_b(n) for n in names], False),
        )

    def apply(self, batch: Batch) -> BatchResult:
        """Apply ``batch`` in one ZFS sync task: all of it or, if a check fails, none of it.

        Optional destroys that fail are skipped and reported in the result.
        """
        if not batch.ops:
            return BatchResult({}, {})
        self._check(*batch.targets)
        result = self.program(_names.pool_of(batch.targets[0]), _BATCH, batch.ops, sync=True) or {}
        failed = int(result.get("failed", 0))
        if failed:
            code = int(result.get("err", errno.EIO))
            target = batch.targets[failed - 1]
            if "written" in result:
                raise DatasetChangedError(
                    f"{target} was written after its snapshot ({result['written']} bytes; nothing was changed)",
                    dataset=target,
                    written=int(result["written"]),
                )
            cls = {
                errno.EEXIST: DatasetExistsError,
                errno.ENOENT: DatasetNotFoundError,
                errno.EBUSY: DatasetBusyError,
                errno.ENOSPC: NoSpaceError,
            }.get(code, ZfsError)
            raise cls(f"{target}: {os.strerror(code)} (nothing was changed)", dataset=target)
        return BatchResult(
            skipped={name: int(err) for name, err in (result.get("skipped") or {}).items()},
            created={
                name: (u64(ids.get("guid", 0)), int(ids.get("createtxg", 0)))
                for name, ids in (result.get("created") or {}).items()
            },
        )

    def family(self, dataset: str) -> dict[str, dict[str, str]]:
        """``dataset`` (if it exists) and its ``dataset.dsg-*`` siblings, with their own
        user properties under our prefix, ``origin`` and ``mountpoint``; and the parent
        with its ``mountpoint``. One read-only channel program."""
        parent = dataset.rsplit("/", 1)[0]
        raw = self.program(_names.pool_of(dataset), _FAMILY, [parent, dataset, _names.PROP_PREFIX], sync=False)
        return {name: dict(props) for name, props in (raw or {}).items()}

    def _props(self, props: Mapping[str, str | int] | None) -> dict[bytes, bytes | int] | None:
        if not props:
            return None
        return {_b(k): (v if isinstance(v, int) else _b(v)) for k, v in props.items()}

    # ------------------------------------------------------------------ mounts
    def mount(self, dataset: str, path: str) -> None:
        """Mount ``dataset`` at ``path`` (created if missing) unless it is mounted there already."""
        self._check(dataset)
        if path in zfs_mounts().get(dataset, []):
            return
        Path(path).mkdir(parents=True, exist_ok=True)
        try:
            self._libc.mount(dataset, path, "zfs", "zfsutil", flags=self.mount_flags(dataset))
        except OSError as exc:
            elsewhere = [p for p in zfs_mounts().get(dataset, []) if p != path]
            detail = f" (it is mounted at {', '.join(elsewhere)})" if elsewhere else ""
            cls = DatasetBusyError if exc.errno == errno.EBUSY else ZfsError
            raise cls(f"cannot mount {dataset} at {path}: {exc.strerror}{detail}", dataset=dataset) from exc

    def mount_flags(self, dataset: str) -> int:
        """The mount(2) flags ``dataset``'s setuid, devices, exec and readonly properties
        ask for, as ``zfs mount`` derives them (mount(2) itself ignores the properties:
        without these flags a dataset with ``setuid=off`` would still honour setuid bits)."""
        props = self.get_props(dataset, list(_MOUNT_FLAG_PROPS)) or {}
        flags = 0
        for prop, (value, flag) in _MOUNT_FLAG_PROPS.items():
            # A channel program reports an index property as its name or its number.
            if str(props.get(prop)) in (value, "0" if value == "off" else "1"):
                flags |= flag
        return flags

    def set_native_props(self, dataset: str, props: Mapping[str, str]) -> None:
        """Set native properties (``zfs set``: libzfs_core and channel programs cannot),
        e.g. ``{"setuid": "off", "devices": "off"}`` on a received repository."""
        self._check(dataset)
        self._zfs_command("set", *(f"{key}={value}" for key, value in props.items()), dataset)

    def unmount(self, dataset: str, path: str | None = None) -> None:
        """Unmount ``dataset`` (at ``path``, or everywhere it is mounted); retried while busy."""
        self._check(dataset)
        paths = [path] if path else list(reversed(zfs_mounts().get(dataset, [])))
        for target in paths:
            # Mounts stacked on top of ours at the same path (an import mounts every
            # dataset whose mountpoint says so): umount2 takes the top one, so lift them
            # off first and put them back after.
            stack = mount_stack(target)
            above = stack[stack.index(dataset) + 1 :] if dataset in stack else []
            for other in reversed(above):
                self._unmount_top(other, target)
            self._unmount_top(dataset, target)
            for other in above:
                self._libc.mount(other, target, "zfs", "zfsutil", flags=self.mount_flags(other))

    def mount_readonly(self, source: str, path: str) -> None:
        """Mount a filesystem or a snapshot read-only at ``path`` (an empty private
        directory). Changes nothing in the pool, so the allow-list is not consulted."""
        try:
            self._libc.mount(source, path, "zfs", "zfsutil", readonly=True, flags=MS_NOSUID | MS_NODEV)
        except OSError as exc:
            raise ZfsError(f"cannot mount {source} read-only at {path}: {exc.strerror}", dataset=source) from exc

    def release_mount(self, source: str, path: str) -> None:
        """Unmount what ``mount_readonly`` mounted (and anything ZFS automounted below it,
        such as a snapshot under ``.zfs``); retried while busy."""
        below = path.rstrip("/") + "/"
        nested = sorted(((ds, p) for ds, p in _zfs_mount_entries() if p.startswith(below)), key=lambda m: -len(m[1]))
        for dataset, inner in nested:
            self._unmount_top(dataset, inner)
        self._unmount_top(source, path)

    def _unmount_top(self, dataset: str, target: str) -> None:
        """Unmount the top mount at ``target`` (which is ``dataset``'s); retried while busy."""

        def attempt() -> None:
            try:
                self._libc.umount(target)
            except OSError as exc:
                if exc.errno == errno.EINVAL and target not in zfs_mounts().get(dataset, []):
                    return  # not mounted (any more): nothing to do
                cls = DatasetBusyError if exc.errno == errno.EBUSY else ZfsError
                raise cls(f"cannot unmount {dataset} from {target}: {exc.strerror}", dataset=dataset) from exc

        self._retry_busy(dataset, "unmount", attempt, target)

    def set_mountpoint(self, dataset: str, path: str) -> None:
        """Set the native ``mountpoint`` property (the one ``zfs`` command we run).

        ``zfs set`` also mounts the dataset there when its canmount is on.
        """
        self._check(dataset)
        self._zfs_command("set", f"mountpoint={path}", dataset)

    def changed_files(self, snapshot: str, filesystem: str) -> list[str]:
        """Files changed in ``filesystem`` since ``snapshot`` (``zfs diff`` lines: "M\t/path").

        ``zfs diff`` needs the filesystem mounted; an unmounted one is mounted for the
        call at a private temporary directory nobody else writes to, then unmounted.
        """
        mounted = zfs_mounts().get(filesystem, [])
        private = None if mounted else tempfile.mkdtemp(prefix="dsg-storage-diff-")
        try:
            if private:
                self.mount(filesystem, private)
            out = self._zfs_command("diff", "-H", snapshot, filesystem)
        finally:
            if private:
                self.unmount(filesystem, private)
                os.rmdir(private)
        root = private or mounted[0]
        return [line.replace(root, "", 1) for line in out.splitlines() if line]

    def _zfs_command(self, *args: str) -> str:
        executable = shutil.which("zfs")
        if executable is None:
            raise ZfsUnavailableError("the 'zfs' command is missing", hint="install zfsutils-linux")
        started = time.monotonic()
        # PDEATHSIG: if we are killed, the command dies with us instead of racing recovery.
        result = subprocess.run(
            [executable, *args], capture_output=True, text=True, check=False, preexec_fn=self._libc.die_with_parent
        )
        log.debug("zfs %s: %.0f ms", " ".join(args), (time.monotonic() - started) * 1000)
        if result.returncode != 0:
            message = result.stderr.strip() or f"exit {result.returncode}"
            cls = DatasetNotFoundError if "does not exist" in message else ZfsError
            raise cls(f"zfs {' '.join(args)}: {message}", dataset=args[-1])
        return result.stdout
