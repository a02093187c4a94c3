"""The ZFS boundary: the only module that imports ``libzfs_core`` or runs ``zfs``.

It speaks ``str`` (never bytes), raises dsg-storage's own errors (never pyzfs's), checks
the allow-list before every mutating call, retries transient EBUSY, and counts every
change it makes (``BoundarySteps``: tests stop the process at step k; benchmarks count
sync tasks).
Mounts, mount directories and owners are its sibling ``Host`` (``zfs.host``).

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
native properties            given at creation (``lzc_create``/``lzc_clone`` props) or
                              cleared by a channel program (``zfs.sync.inherit``, for
                              inheritable ones such as ``zoned``): a transaction needs
                              nothing else (docs/archive/0012)
``zfs set -u mountpoint=``    libzfs_core cannot set a native property; run only for a
                              bundle import's target and for a transaction begun by
                              an earlier version (its workspace had its own path)
``zfs set setuid=off``        the same, for a bundle import: what is received from
``devices=off``               somebody else never honours setuid bits or devices
``zfs diff``                  libzfs_core has no diff; run only when a commit finds the
                              repository written since begin (``written@base`` > 0),
                              to tell file changes from the metadata a mount writes
``zfs list -j``/``zfs get``   reads on a pool imported read-only: channel programs,
                              even ``nosync`` ones, refuse such a pool (EROFS); and
                              the lists of read-only commands (``listing="commands"``):
                              a process costs less than loading libzfs_core
                              (``zfs.listing``); a list too big for one program (its
                              memory limit); prune's read of the commits with their
                              holds and clones: one process costs less than three
                              programs past ~15 snapshots
``zpool import``/``export``   (``zpool``) offline access: libzfs_core cannot scan
                              devices, import or export; imports are read-only,
                              with no cache file and nothing mounted
============================  =====================================================
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from .. import _log
from .. import names as _names
from ..errors import ZfsUnavailableError
from ..zfs.allow import AllowList
from . import programs
from .errors import PROGRAM_LIMITS, DatasetChangedError, PoolReadOnly, ProgramLimitError, from_errno, from_pyzfs
from .host import BoundaryStep, BoundarySteps, Guard, Host, retry_busy
from .limits import batch_limits, largest_limits
from .listing import CommandListing, ZfsCommand, snapshot_of
from .port import Foreign, Snapshot
from .program_listing import ProgramListing
from .programs import Batch, BatchResult, u64
from .reads import ForeignRead, MountFlagsRead, Read, together_args

log = _log.getLogger("dsg_storage")
T = TypeVar("T")

INSTALL_HINT = (
    "install the OpenZFS Python bindings from your OS: 'apt-get install python3-pyzfs' on Debian/Ubuntu "
    "(PyPI's 'pyzfs' is an unrelated, obsolete package: do not use it)"
)

__all__ = [
    "Batch",
    "BatchResult",
    "BoundaryStep",
    "BoundarySteps",
    "DatasetChangedError",
    "Snapshot",
    "Zfs",
    "open_zfs",
]


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


def _b(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


def zfs_version() -> str:
    """The loaded ZFS kernel module's version, e.g. "2.3.9-1"."""
    try:
        return Path("/sys/module/zfs/version").read_text().strip()
    except OSError:
        return "unknown"


def open_zfs(allow: AllowList | str | None = None, *, read_only: bool = False, listing: str = "programs") -> Zfs:
    """The boundary object, built in this one place: ``allow`` an AllowList, a
    comma-separated string, or None for ``$DSG_STORAGE_ALLOW`` (``settings``; unset: nothing).
    ``listing="commands"``: lists by ``zfs list``/``zfs get`` (``zfs.listing``), for a
    read-only command that would otherwise load libzfs_core for its lists alone."""
    if not isinstance(allow, AllowList):
        from ..settings import Settings

        allow = AllowList.parse(allow) if allow else Settings.default().allow
    return Zfs(allow, read_only=read_only, listing=listing)


class Zfs:
    """libzfs_core and the few commands around it, in dsg-storage's terms.

    ``allow`` confines every mutating call; ``busy_timeout`` bounds the retries of
    transient EBUSY (unmount, destroy); ``sleep`` is injectable so tests never wait.
    ``read_only`` refuses every mutating call with ReadOnlyError (offline access).
    ``on_step`` observes every change made (see ``BoundarySteps``); ``host`` makes the
    mounts. ``listing``: how lists are read (``zfs.listing``): "programs" (channel
    programs) or "commands" (``zfs`` commands). libzfs_core is loaded at its first use:
    a read-only command that lists by commands never loads it.
    """

    def __init__(
        self,
        allow: AllowList,
        *,
        busy_timeout: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
        lzc: ModuleType | None = None,
        read_only: bool = False,
        on_step: Callable[[BoundaryStep], None] | None = None,
        listing: str = "programs",
    ) -> None:
        self.guard = Guard(allow, read_only)
        self.steps = BoundarySteps(on_step)
        self.busy_timeout = busy_timeout
        self.sleep = sleep
        self._lzc = lzc
        self.host = Host(self.guard, self.steps, busy_timeout=busy_timeout, sleep=sleep, flags_of=self.mount_flags)
        # PDEATHSIG: if we are killed, a command dies with us instead of racing recovery.
        self.command = ZfsCommand(preexec=self.host.syscalls.die_with_parent)
        if listing not in ("programs", "commands"):
            raise ValueError(f"listing is 'programs' or 'commands', not {listing!r}")
        self.listing: ProgramListing | CommandListing = (
            CommandListing(
                self.command,
                known=_names.OUR_PROPS,
                on_snapshots=_names.SNAPSHOT_PROPS,
                programs=os.geteuid() == 0,  # channel programs are root's alone (zfs-program(8))
            )
            if listing == "commands"
            else ProgramListing(
                self._read_program,
                CommandListing(self.command),
                self._lzc_exists,
                known=CommandListing(self.command, known=_names.OUR_PROPS, on_snapshots=_names.SNAPSHOT_PROPS),
            )
        )

    @functools.cached_property
    def _read_limits(self) -> dict[str, int]:
        return largest_limits()

    @property
    def lzc(self) -> ModuleType:
        """libzfs_core, loaded at its first use (or the module a test gave)."""
        if self._lzc is None:
            self._lzc = load_libzfs_core()
        return self._lzc

    @property
    def _lzc_errors(self) -> ModuleType:
        self.lzc  # noqa: B018 (loaded first: our own error if the bindings are missing)
        from libzfs_core import exceptions  # type: ignore[import-not-found,unused-ignore]

        module: ModuleType = exceptions
        return module

    def _read_program(self, target: str, source: str, args: list[str]) -> Any:
        return self.program(_names.pool_of(target), source, args, sync=False)

    @property
    def allow(self) -> AllowList:
        return self.guard.allow

    @property
    def read_only(self) -> bool:
        return self.guard.read_only

    def _call(self, dataset: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except self._lzc_errors.ZFSError as exc:
            raise from_pyzfs(exc, dataset) from exc

    def _change(self, op: str, target: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Make one change to the pool (one sync task) and count it."""
        result = self._call(target, fn, *args, **kwargs)
        self.steps.done(op, target, syncs=True)
        return result

    # ------------------------------------------------------------------ reads
    def exists(self, name: str) -> bool:
        """Whether the dataset or snapshot ``name`` exists (``lzc_exists``; listing by
        commands, one ``zfs list``, so that a read-only command never loads libzfs_core)."""
        return self.listing.exists(name)

    def _lzc_exists(self, name: str) -> bool:
        return bool(self._call(name, self.lzc.lzc_exists, _b(name)))

    def program(
        self,
        pool: str,
        source: str,
        args: Sequence[str],
        *,
        sync: bool,
        subject: str | None = None,
        limits: Mapping[str, int] | None = None,
    ) -> Any:
        """Run a channel program (Lua) on ``pool``; returns its decoded return value.
        Its errors name ``subject`` (default: the first argument). ``limits``: its
        ``instrlimit``/``memlimit``; by default a read-only program gets the kernel's
        largest (it may list a long history), a changing one pyzfs's defaults.

        Callers of a ``sync`` (changing) program check the allow-list for its targets.
        """
        fn = self.lzc.lzc_channel_program if sync else self.lzc.lzc_channel_program_nosync
        params = [_b(a) for a in args]
        if limits is None:
            limits = {} if sync else self._read_limits
        try:
            # pyzfs hands back the program's return value itself (already unwrapped).
            return programs.decode(fn(_b(pool), _b(source), params=params, **limits))
        except self._lzc_errors.ZFSError as exc:
            if getattr(exc, "errno", None) == errno.EROFS:
                raise PoolReadOnly(pool) from exc
            subject = subject or (args[0] if args else pool)
            if not sync and type(exc).__name__ in PROGRAM_LIMITS:
                raise ProgramLimitError(
                    f"{subject}: the read is too big for one channel program ({type(exc).__name__}: {exc})",
                    dataset=subject,
                ) from exc
            raise from_pyzfs(exc, subject) from exc

    def _read(self, read: Read) -> Any:
        """One read alone, in its own program (as ``together`` asks it with others)."""
        return read.parse(self.program(_names.pool_of(read.dataset), read.source, read.args(), sync=False))

    def together(self, *reads: Read) -> tuple[Any, ...]:
        """``reads`` of one moment (all of one pool), answered by one read-only channel
        program, each as its own port method answers it (``zfs.reads``)."""
        if len(reads) < 2:
            return tuple(read.ask(self) for read in reads)
        pool = _names.pool_of(reads[0].dataset)
        if any(_names.pool_of(read.dataset) != pool for read in reads):
            raise ValueError("reads asked together must be of one pool")
        source = programs.together([read.source for read in reads])
        try:
            raw = self.program(pool, source, together_args(reads), sync=False, subject=reads[0].dataset) or {}
        except PoolReadOnly:
            return tuple(read.ask(self) for read in reads)
        return tuple(read.parse(raw.get(str(i))) for i, read in enumerate(reads, 1))

    def get_props(self, dataset: str, names: Iterable[str]) -> dict[str, Any] | None:
        """Properties of ``dataset`` (native or user) that are set; None if it does not exist."""
        result = self.program(_names.pool_of(dataset), programs.READ_PROPS, [dataset, *names], sync=False)
        if not result or not result.get("exists"):
            return None
        return dict(result.get("props") or {})

    def snapshots(self, dataset: str, user_prefix: str = _names.PROP_PREFIX) -> list[Snapshot]:
        """Snapshots of ``dataset`` in creation order, with our user properties."""
        snaps = [snapshot_of(item) for item in self.listing.snapshots(dataset, user_prefix)]
        return sorted(snaps, key=lambda s: s.createtxg)

    def foreign(self, dataset: str, bases: Sequence[str], *, written_of: str | None = None) -> Foreign:
        """What other tools made of ``dataset`` since its base (``programs.FOREIGN``); with
        ``written_of``, in the same read, what that filesystem has written since the base."""
        found: Foreign = self._read(ForeignRead(dataset, bases, written_of))
        return found

    def filesystems(self, under: str, user_prefix: str = _names.PROP_PREFIX) -> dict[str, dict[str, str]]:
        """``under`` and every filesystem below it: their own user properties under
        ``user_prefix``, ``mountpoint`` (as the pool reports it) and, for a clone,
        ``origin``. Empty if absent."""
        return self.listing.filesystems(under, user_prefix)

    def origin_and_snapshots(
        self, dataset: str, user_prefix: str = _names.PROP_PREFIX, *, guarded: bool = False
    ) -> tuple[str, list[Snapshot]]:
        """``dataset``'s ``origin`` ("" unless it is a clone) and its snapshots as
        ``snapshots`` lists them, read together (listing by commands: one ``zfs get``
        process, not two); with ``guarded``, each with its ``holds`` and ``clones``
        (their ``userrefs`` and ``clones``; by commands in the same process). ZfsError if it does not
        exist."""
        origin, items = self.listing.origin_and_snapshots(dataset, user_prefix, guarded=guarded)
        return origin, sorted((snapshot_of(item) for item in items), key=lambda s: s.createtxg)

    def children(self, dataset: str) -> list[str]:
        raw = self.program(_names.pool_of(dataset), programs.CHILDREN, [dataset], sync=False) or {}
        return [raw[k] for k in sorted(raw)]

    def family(self, dataset: str) -> dict[str, dict[str, str]]:
        """``dataset`` and its ``dataset.dsg-*`` siblings with their own user properties,
        ``origin``, ``mountpoint``, ``zoned`` if set; the parent's ``mountpoint``. One read."""
        return self.listing.family(dataset, _names.PROP_PREFIX)

    def families(self, under: str) -> dict[str, dict[str, str]]:
        """``under`` and every filesystem below it, each described as ``family`` describes
        its members (listing by commands: other tools' properties left out). One read for
        all the repositories below ``under``."""
        return self.listing.families(under, _names.PROP_PREFIX)

    # ------------------------------------------------------------------ writes
    def create(self, name: str, props: Mapping[str, str | int] | None = None) -> None:
        self.guard.check(name)
        self._change("create", name, self.lzc.lzc_create, _b(name), "zfs", self._props(props))

    def snapshot(self, names: Sequence[str], props: Mapping[str, str] | None = None) -> None:
        """Atomically create ``names`` (all in one pool) with the given user properties."""
        self.guard.check(*names)
        self._change("snapshot", names[0], self.lzc.lzc_snapshot, [_b(n) for n in names], self._props(props))

    def clone(self, name: str, origin: str, props: Mapping[str, str | int] | None = None) -> None:
        self.guard.check(name)
        self._change("clone", name, self.lzc.lzc_clone, _b(name), _b(origin), self._props(props))

    def promote(self, name: str) -> None:
        self.guard.check(name)
        self._change("promote", name, self.lzc.lzc_promote, _b(name))

    def rename(self, source: str, target: str) -> None:
        self.guard.check(source, target)
        self._change("rename", source, self.lzc.lzc_rename, _b(source), _b(target))

    def destroy(self, name: str) -> None:
        """Destroy a filesystem (unmounting it first) or a snapshot; retried while busy."""
        self.guard.check(name)
        if "@" in name:
            self.destroy_snapshots([name])
            return
        self.host.unmount(name)
        retry_busy(
            lambda: self._change("destroy", name, self.lzc.lzc_destroy, _b(name)),
            dataset=name,
            what="destroy",
            timeout=self.busy_timeout,
            sleep=self.sleep,
        )

    def destroy_with_snapshots(self, filesystem: str) -> None:
        """Destroy ``filesystem`` and its snapshots (it must have no children)."""
        self.destroy_snapshots([s.name for s in self.snapshots(filesystem)])
        self.destroy(filesystem)

    def rollback(self, filesystem: str) -> None:
        """Roll ``filesystem`` back to its latest snapshot (works while mounted)."""
        self.guard.check(filesystem)
        self._change("rollback", filesystem, self.lzc.lzc_rollback, _b(filesystem))

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
        self.guard.check(snapshot.split("@", 1)[0])
        self._change("receive", snapshot, self.lzc.lzc_receive, _b(snapshot), fd, force=force)

    def destroy_snapshots(self, names: Sequence[str]) -> None:
        if not names:
            return
        self.guard.check(*names)
        retry_busy(
            lambda: self._change("destroy", names[0], self.lzc.lzc_destroy_snaps, [_b(n) for n in names], False),
            dataset=names[0],
            what="destroy",
            timeout=self.busy_timeout,
            sleep=self.sleep,
        )

    def apply(self, batch: Batch) -> BatchResult:
        """Apply ``batch`` in one ZFS sync task: all of it or, if a check fails, none of it.

        Optional destroys that fail are skipped and reported in the result.
        """
        if not batch.ops:
            return BatchResult({}, {})
        self.guard.check(*batch.targets)
        # Sized to the batch: a bundle's import sets the properties of every snapshot
        # it carries in its final batch (up to 100,000).
        sized = batch_limits(batch.ops, len(batch.targets), self._read_limits)
        result = (
            self.program(_names.pool_of(batch.targets[0]), programs.BATCH, batch.ops, sync=True, limits=sized) or {}
        )
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
            raise from_errno(code, f"{target} (nothing was changed)", target)
        self.steps.done("batch", batch.targets[0], syncs=True)
        return BatchResult(
            skipped={name: int(err) for name, err in (result.get("skipped") or {}).items()},
            created={
                name: (u64(ids.get("guid", 0)), int(ids.get("createtxg", 0)))
                for name, ids in (result.get("created") or {}).items()
            },
        )

    def _props(self, props: Mapping[str, str | int] | None) -> dict[bytes, bytes | int] | None:
        if not props:
            return None
        return {_b(k): (v if isinstance(v, int) else _b(v)) for k, v in props.items()}

    # ------------------------------------------------------------------ the zfs command
    def set_mountpoint(self, dataset: str, path: str) -> None:
        """Set the native ``mountpoint`` property (the one ``zfs`` command of the commit path).

        ``-u``: the property only. Without it ``zfs set`` would also (re)mount the dataset
        at ``path`` by path, following a link planted there; ``Host.mount`` mounts it
        through a checked descriptor instead.
        """
        self.guard.check(dataset)
        self._zfs_command("set", "-u", f"mountpoint={path}", dataset)
        self.steps.done("set mountpoint", dataset, syncs=True)

    def set_native_props(self, dataset: str, props: Mapping[str, str]) -> None:
        """Set native properties (``zfs set``: libzfs_core and channel programs cannot),
        e.g. ``{"setuid": "off", "devices": "off"}`` on a received repository, in one
        command and one sync task (user properties may come with them: all or none is
        set). ``-u``: the properties only, never a (re)mount (a ``mountpoint`` among
        them is set as ``set_mountpoint`` sets it)."""
        self.guard.check(dataset)
        if str(props.get("mountpoint", "none")).startswith("/"):
            self.guard.check_place(props["mountpoint"])
        self._zfs_command("set", "-u", *(f"{key}={value}" for key, value in props.items()), dataset)
        self.steps.done("set", dataset, syncs=True)

    def mount_flags(self, dataset: str) -> int:
        """The mount(2) flags ``dataset``'s setuid, devices, exec and readonly properties
        ask for, as ``zfs mount`` derives them (mount(2) itself ignores the properties:
        without these flags a dataset with ``setuid=off`` would still honour setuid bits)."""
        try:
            flags: int = self._read(MountFlagsRead(dataset))
        except PoolReadOnly:  # offline: read-only mounts get nosuid,nodev anyway
            return 0
        return flags

    def changed_files(self, snapshot: str, filesystem: str) -> list[str]:
        """Files changed in ``filesystem`` since ``snapshot`` (``zfs diff`` lines: "M\t/path").

        ``zfs diff`` needs the filesystem mounted, and the snapshot's own filesystem too
        (it reads the snapshot through ``.zfs``; for a clone, ``snapshot`` may be its
        origin); an unmounted one is mounted for the call at a private temporary
        directory nobody else writes to, then unmounted.
        """
        with contextlib.ExitStack() as stack:
            roots = {
                fs: self._mounted_for_diff(stack, fs) for fs in dict.fromkeys((filesystem, snapshot.split("@")[0]))
            }
            out = self._zfs_command("diff", "-H", snapshot, filesystem)
        return [line.replace(roots[filesystem], "", 1) for line in out.splitlines() if line]

    def _mounted_for_diff(self, stack: contextlib.ExitStack, filesystem: str) -> str:
        """Where ``filesystem`` is mounted, mounting it privately (read-only) until
        ``stack`` closes if it is not."""
        mounted = self.host.mounts().get(filesystem, [])
        if mounted:
            return mounted[0]
        import tempfile

        private = tempfile.mkdtemp(prefix="dsg-storage-diff-")
        stack.callback(os.rmdir, private)
        self.host.mount_readonly(filesystem, private)
        stack.callback(self.host.release_mount, filesystem, private)
        return private

    def _zfs_command(self, *args: str) -> str:
        """A ``zfs`` command that changes or compares (``set``, ``diff``), logged; lists
        by command are not (a read-only command would import logging for them)."""
        started = time.monotonic()
        out = self.command(*args)
        log.debug("zfs %s: %.0f ms", " ".join(args), (time.monotonic() - started) * 1000)
        return out
