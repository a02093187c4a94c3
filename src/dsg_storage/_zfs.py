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
``zfs set mountpoint=``       **the only ``zfs`` command**: native properties cannot be
                              set through libzfs_core or a channel program, and the
                              repository's ``mountpoint`` must be a real property so it
                              survives a reboot
============================  =====================================================
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import attrs
import tenacity

from . import _names
from ._allow import AllowList
from ._errors import (
    DatasetBusyError,
    DatasetExistsError,
    DatasetNotFoundError,
    DsgStorageError,
    InvalidNameError,
    NoSpaceError,
    PoolUnavailableError,
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


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _b(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


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

_USER_PROPS = (
    _LUA_PREAMBLE
    + """
local out = {}
for name, value in zfs.list.user_properties(argv[1]) do out[name] = value end
return out
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
    for name, value in zfs.list.user_properties(snap) do
        if string.sub(name, 1, #argv[2]) == argv[2] then user[name] = value end
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

# argv = {dataset, name, value, name, value, ...}; checked first so a bad one changes nothing.
_SET_USER_PROPS = (
    _LUA_PREAMBLE
    + """
local ds = argv[1]
for i = 2, #argv, 2 do
    local err = zfs.check.set_prop(ds, argv[i], argv[i + 1])
    if err ~= 0 then return {failed = argv[i], err = err} end
end
for i = 2, #argv, 2 do
    assert(zfs.sync.set_prop(ds, argv[i], argv[i + 1]) == 0)
end
return {failed = ""}
"""
)


class _Libc:
    def __init__(self) -> None:
        self.lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self.lib.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
        self.lib.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]

    def mount(self, source: str, target: str, fstype: str, data: str) -> None:
        if self.lib.mount(source.encode(), target.encode(), fstype.encode(), 0, data.encode()) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), target)

    def umount(self, target: str) -> None:
        if self.lib.umount2(target.encode(), 0) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), target)


def _unescape_mountinfo(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def zfs_mounts() -> dict[str, list[str]]:
    """Mounted ZFS filesystems: dataset -> mount paths (several when stacked)."""
    mounts: dict[str, list[str]] = {}
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            if rfields and rfields[0] == "zfs":
                mounts.setdefault(_unescape_mountinfo(rfields[1]), []).append(_unescape_mountinfo(fields[4]))
    return mounts


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
    """

    def __init__(
        self,
        allow: AllowList,
        *,
        busy_timeout: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
        lzc: ModuleType | None = None,
    ) -> None:
        self.allow = allow
        self.busy_timeout = busy_timeout
        self._sleep = sleep
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
            sleep=self._sleep,
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
        for dataset in datasets:
            self.allow.check(dataset)

    # ------------------------------------------------------------------ reads
    def exists(self, name: str) -> bool:
        return bool(self._call(name, self.lzc.lzc_exists, _b(name)))

    def program(self, pool: str, source: str, args: Sequence[str], *, sync: bool) -> Any:
        """Run a channel program (Lua) on ``pool``; returns its decoded return value."""
        if sync:
            self._check(*(a for a in args[:1]))
        fn = self.lzc.lzc_channel_program if sync else self.lzc.lzc_channel_program_nosync
        params = [_b(a) for a in args]
        # pyzfs hands back the program's return value itself (already unwrapped).
        return _decode(self._call(args[0] if args else pool, fn, _b(pool), _b(source), params=params))

    def get_props(self, dataset: str, names: Iterable[str]) -> dict[str, Any] | None:
        """Properties of ``dataset`` (native or user) that are set; None if it does not exist."""
        result = self.program(_names.pool_of(dataset), _READ_PROPS, [dataset, *names], sync=False)
        if not result or not result.get("exists"):
            return None
        return dict(result.get("props") or {})

    def user_props(self, dataset: str) -> dict[str, str]:
        return dict(self.program(_names.pool_of(dataset), _USER_PROPS, [dataset], sync=False) or {})

    def snapshots(self, dataset: str, user_prefix: str = _names.PROP_PREFIX) -> list[Snapshot]:
        """Snapshots of ``dataset`` in creation order, with our user properties."""
        raw = self.program(_names.pool_of(dataset), _SNAPSHOTS, [dataset, user_prefix], sync=False) or {}
        snaps = [
            Snapshot(
                name=item["name"],
                guid=int(item["guid"]) & 0xFFFFFFFFFFFFFFFF,  # nvlists carry uint64 as int64
                createtxg=int(item["createtxg"]),
                creation=int(item["creation"]),
                user_props=dict(item.get("user") or {}),
            )
            for item in raw.values()
        ]
        return sorted(snaps, key=lambda s: s.createtxg)

    def children(self, dataset: str) -> list[str]:
        raw = self.program(_names.pool_of(dataset), _CHILDREN, [dataset], sync=False) or {}
        return [raw[k] for k in sorted(raw)]

    def holds(self, snapshot: str) -> dict[str, int]:
        return {_s(k): v for k, v in self._call(snapshot, self.lzc.lzc_get_holds, _b(snapshot)).items()}

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

    def destroy_snapshots(self, names: Sequence[str]) -> None:
        if not names:
            return
        self._check(*names)
        self._retry_busy(
            names[0],
            "destroy",
            lambda: self._call(names[0], self.lzc.lzc_destroy_snaps, [_b(n) for n in names], False),
        )

    def set_user_props(self, dataset: str, props: Mapping[str, str]) -> None:
        """Set user properties atomically (one sync task); a bad one sets none."""
        self._check(dataset)
        flat: list[str] = [dataset]
        for key, value in props.items():
            flat += [key, value]
        result = self.program(_names.pool_of(dataset), _SET_USER_PROPS, flat, sync=True)
        if result and result.get("failed"):
            raise ZfsError(
                f"{dataset}: cannot set property {result['failed']} (error {result['err']})", dataset=dataset
            )

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
            self._libc.mount(dataset, path, "zfs", "zfsutil")
        except OSError as exc:
            raise ZfsError(f"cannot mount {dataset} at {path}: {exc.strerror}", dataset=dataset) from exc

    def unmount(self, dataset: str, path: str | None = None) -> None:
        """Unmount ``dataset`` (at ``path``, or everywhere it is mounted); retried while busy."""
        self._check(dataset)
        paths = [path] if path else list(reversed(zfs_mounts().get(dataset, [])))
        for target in paths:

            def attempt(target: str = target) -> None:
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

    def _zfs_command(self, *args: str) -> None:
        executable = shutil.which("zfs")
        if executable is None:
            raise ZfsUnavailableError("the 'zfs' command is missing", hint="install zfsutils-linux")
        started = time.monotonic()
        result = subprocess.run([executable, *args], capture_output=True, text=True, check=False)
        log.debug("zfs %s: %.0f ms", " ".join(args), (time.monotonic() - started) * 1000)
        if result.returncode != 0:
            message = result.stderr.strip() or f"exit {result.returncode}"
            cls = DatasetNotFoundError if "does not exist" in message else ZfsError
            raise cls(f"zfs {' '.join(args)}: {message}", dataset=args[-1])


def walk_mounts_under(path: str) -> Iterator[str]:
    """Mount paths at or below ``path`` (any filesystem), deepest first."""
    prefix = path.rstrip("/") + "/"
    found = []
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            mount_path = _unescape_mountinfo(line.split()[4])
            if mount_path == path or mount_path.startswith(prefix):
                found.append(mount_path)
    yield from sorted(found, key=len, reverse=True)
