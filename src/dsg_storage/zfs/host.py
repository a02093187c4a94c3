"""The host side of the boundary: mounts, mount directories, owner and mode.

Everything root does to the host's filesystem on a repository's behalf goes through
``Host``: mounting and unmounting ZFS filesystems (mount(2)/umount2(2), see ``mounts``),
creating and removing the directories they are mounted on, and giving a repository's
root its owner and mode. Each change is a counted step (a ``BoundaryStep``, counted by
``BoundarySteps``), like every change ``Zfs`` makes to the pool.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import attrs

from .. import _log, hostfs
from ..errors import DatasetBusyError, ReadOnlyError
from .allow import AllowList
from .errors import from_errno
from .mounts import (
    MS_NODEV,
    MS_NOSUID,
    Syscalls,
    holders_of,
    mount_stack,
    orphaned_reader_mounts,
    zfs_mount_entries,
    zfs_mounts,
)

log = _log.getLogger("dsg_storage")
T = TypeVar("T")


@attrs.frozen
class BoundaryStep:
    """One change made through the boundary: its number in this process, what, on what."""

    index: int
    op: str
    target: str
    syncs: bool  # it waited for a ZFS sync task (a TXG), i.e. it changed the pool


@attrs.define
class BoundarySteps:
    """Counts the boundary's changes and tells an observer about each one.

    ``observer`` is called after every change has been made (tests stop the process
    there to simulate a crash at that step; nothing in the library sets one). ``syncs``
    counts the changes that each cost a ZFS sync task.
    """

    observer: Callable[[BoundaryStep], None] | None = None
    count: int = 0
    syncs: int = 0

    def done(self, op: str, target: str, *, syncs: bool = False) -> None:
        self.count += 1
        self.syncs += syncs
        if self.observer is not None:
            self.observer(BoundaryStep(self.count, op, target, syncs))


@attrs.define
class Guard:
    """What every change is checked against first: the allow-list, read-only access."""

    allow: AllowList
    read_only: bool = False

    def check_place(self, path: str, *, what: str = "mountpoint") -> None:
        """Where root is about to mount, or give an owner: the allow-list's rule
        (through sudo, the policy's directories and root-owned parents, no link)."""
        self.allow.check_place(path, what=what)

    def check(self, *datasets: str) -> None:
        if self.read_only:
            first = datasets[0] if datasets else None
            raise ReadOnlyError(
                f"{first or 'the pool'} is opened read-only (offline access): nothing can change", dataset=first
            )
        for dataset in datasets:
            self.allow.check(dataset)


def retry_busy(
    fn: Callable[[], T],
    *,
    dataset: str,
    what: str,
    timeout: float,
    sleep: Callable[[float], None],
    mount_path: str | None = None,
) -> T:
    """Run ``fn``; while it fails with EBUSY retry with backoff, at most ``timeout`` s;
    then say which processes hold ``mount_path``."""
    import tenacity  # here: reads (status, history) never retry, and need not load it

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(lambda e: isinstance(e, DatasetBusyError)),
        stop=tenacity.stop_after_delay(timeout),
        wait=tenacity.wait_exponential(multiplier=0.02, max=0.5),
        sleep=sleep,
        reraise=True,
    )
    try:
        return retrying(fn)
    except DatasetBusyError as exc:
        holders = holders_of(mount_path) if mount_path else []
        held = f"; in use by {', '.join(holders)}" if holders else ""
        raise DatasetBusyError(
            f"cannot {what} {dataset}: still busy after {timeout:g}s{held}",
            dataset=dataset,
            hint="close what uses it and retry",
        ) from exc


class Host:
    """Mounts and the directories under them, in dsg-storage's terms."""

    def __init__(
        self,
        guard: Guard,
        steps: BoundarySteps,
        *,
        busy_timeout: float,
        sleep: Callable[[float], None],
        flags_of: Callable[[str], int] = lambda dataset: 0,
    ) -> None:
        self.guard = guard
        self.flags_of = flags_of  # the mount flags a dataset's properties ask for (nosuid...)
        self.steps = steps
        self.busy_timeout = busy_timeout
        self.sleep = sleep
        self.syscalls = Syscalls()

    # ------------------------------------------------------------------ reads
    def mounts(self) -> dict[str, list[str]]:
        """Mounted ZFS filesystems: dataset -> mount paths (several when stacked)."""
        return zfs_mounts()

    def holders(self, path: str, *, writing: bool = False) -> list[str]:
        return holders_of(path, writing=writing)

    def orphaned_reader_mounts(self) -> list[tuple[str, str]]:
        return orphaned_reader_mounts()

    # ------------------------------------------------------------------ mounts
    def mount(self, dataset: str, path: str, *, flags: int | None = None) -> None:
        """Mount ``dataset`` at ``path`` (created if missing) unless it is mounted there
        already, with the mount(2) flags its properties ask for: read now, or ``flags``
        when they were read at this moment already (``zfs.reads.MountFlagsRead``)."""
        self.guard.check(dataset)
        self.guard.check_place(path)
        if path in zfs_mounts().get(dataset, []):
            return
        # Reached without following a link and mounted on through its descriptor: a path
        # swapped for a link meanwhile changes nothing.
        with self._parent(path) as (parent_fd, name):
            created = not _exists_at(parent_fd, name)
            dirfd = hostfs.make_mount_dir(parent_fd, name)
            if created:
                self.steps.done("mkdir", path)
            try:
                hostfs.mount_at(dataset, dirfd, "zfsutil", self.flags_of(dataset) if flags is None else flags)
            except OSError as exc:
                elsewhere = [p for p in zfs_mounts().get(dataset, []) if p != path]
                detail = f" (it is mounted at {', '.join(elsewhere)})" if elsewhere else ""
                raise from_errno(exc.errno, f"cannot mount {dataset} at {path}{detail}", dataset) from exc
            finally:
                os.close(dirfd)
        self.steps.done("mount", dataset)

    @contextlib.contextmanager
    def _parent(self, path: str) -> Iterator[tuple[int, str]]:
        """A descriptor of ``path``'s parent (created if missing), reached without
        following a link, and the last component."""
        parent, name = os.path.split(path.rstrip("/"))
        if not os.path.isdir(parent):
            Path(parent).mkdir(parents=True, exist_ok=True)
        fd = hostfs.open_dir(parent)
        try:
            yield fd, name
        finally:
            os.close(fd)

    def unmount(self, dataset: str, path: str | None = None, *, lazy: bool = False) -> None:
        """Unmount ``dataset`` (at ``path``, or everywhere it is mounted); retried while busy.

        ``lazy`` detaches it from its path at once instead: processes that still have a
        directory or file open in it keep reading what they read, until they let go
        (then the kernel unmounts it); it is never busy."""
        self.guard.check(dataset)
        paths = [path] if path else list(reversed(zfs_mounts().get(dataset, [])))
        for target in paths:
            # Mounts stacked on top of ours at the same path (an import mounts every
            # dataset whose mountpoint says so): umount2 takes the top one, lazy or not,
            # so lift them off first and put them back after.
            stack = mount_stack(target)
            if dataset not in stack:
                continue
            above = stack[stack.index(dataset) + 1 :]
            for other in reversed(above):
                self._unmount_top(other, target)
            if lazy:
                self.syscalls.umount(target, lazy=True)
                self.steps.done("detach", dataset)
            else:
                self._unmount_top(dataset, target)
            for other in above:
                self.syscalls.mount(other, target, "zfs", "zfsutil", flags=self.flags_of(other))
                self.steps.done("mount", other)

    def freeze(self, dataset: str, path: str, *, wait: float = 0.0) -> None:
        """Remount ``dataset`` at ``path`` read-only, so that nothing changes it from now
        on while readers go on reading. Refused (DatasetBusyError naming them) while a
        process has a file there open for writing, retried for at most ``wait`` seconds."""
        self.guard.check(dataset)

        def attempt() -> None:
            try:
                self.syscalls.remount(path, readonly=True, flags=self._flags_at(path))
            except OSError as exc:
                raise from_errno(exc.errno, f"cannot make {dataset} at {path} read-only", dataset) from exc

        try:
            retry_busy(attempt, dataset=dataset, what="freeze", timeout=wait, sleep=self.sleep)
        except DatasetBusyError as exc:
            writers = holders_of(path, writing=True)
            raise DatasetBusyError(
                f"{dataset} at {path} is open for writing by {', '.join(writers) or 'a process'}: "
                "what it writes after the commit would be lost",
                dataset=dataset,
                hint="close it and retry, or give the commit time to wait for it (--wait SECONDS)",
            ) from exc
        self.steps.done("freeze", dataset)

    @staticmethod
    def _flags_at(path: str) -> int:
        """The nosuid, nodev and noexec flags of the mount at ``path`` now: a remount sets
        a mount's flags anew, and a freeze or thaw keeps them as the mount has them (no
        read of the properties, which the mount was made from)."""
        kept = os.ST_NOSUID | os.ST_NODEV | os.ST_NOEXEC  # the same bits as MS_NOSUID...
        return os.statvfs(path).f_flag & kept

    def thaw(self, dataset: str, path: str) -> None:
        """Make ``dataset`` at ``path`` writable again (undo ``freeze``)."""
        self.guard.check(dataset)
        try:
            self.syscalls.remount(path, readonly=False, flags=self._flags_at(path))
        except OSError as exc:
            raise from_errno(exc.errno, f"cannot make {dataset} at {path} writable again", dataset) from exc
        self.steps.done("thaw", dataset)

    def mount_readonly(self, source: str, path: str) -> None:
        """Mount a filesystem or a snapshot read-only at ``path`` (an empty private
        directory). Changes nothing in the pool, so neither checked nor counted."""
        try:
            self.syscalls.mount(source, path, "zfs", "zfsutil", readonly=True, flags=MS_NOSUID | MS_NODEV)
        except OSError as exc:
            raise from_errno(exc.errno, f"cannot mount {source} read-only at {path}", source) from exc

    def release_mount(self, source: str, path: str) -> None:
        """Unmount what ``mount_readonly`` mounted (and anything ZFS automounted below it,
        such as a snapshot under ``.zfs``); retried while busy."""
        below = path.rstrip("/") + "/"
        nested = sorted(((ds, p) for ds, p in zfs_mount_entries() if p.startswith(below)), key=lambda m: -len(m[1]))
        for dataset, inner in nested:
            self._unmount_top(dataset, inner, counted=False)
        self._unmount_top(source, path, counted=False)

    def _unmount_top(self, dataset: str, target: str, *, counted: bool = True) -> None:
        """Unmount the top mount at ``target`` (which is ``dataset``'s); retried while busy."""

        def attempt() -> bool:
            try:
                self.syscalls.umount(target)
            except OSError as exc:
                if exc.errno == errno.EINVAL and target not in zfs_mounts().get(dataset, []):
                    return False  # not mounted (any more): nothing to do
                raise from_errno(exc.errno, f"cannot unmount {dataset} from {target}", dataset) from exc
            return True

        unmounted = retry_busy(
            attempt, dataset=dataset, what="unmount", timeout=self.busy_timeout, sleep=self.sleep, mount_path=target
        )
        if unmounted and counted:
            self.steps.done("unmount", dataset)

    # ------------------------------------------------------------------ directories
    def make_dir(self, path: str) -> None:
        """Create ``path`` as a mount directory, if missing (never through a link)."""
        self.guard.check_place(path)
        with self._parent(path) as (parent_fd, name):
            if _exists_at(parent_fd, name):
                return
            os.close(hostfs.make_mount_dir(parent_fd, name))
        self.steps.done("mkdir", path)

    def remove_dir(self, path: str) -> None:
        """Remove the empty directory a workspace was mounted on; keep anything non-empty."""
        parent, name = os.path.split(path.rstrip("/"))
        try:
            fd = hostfs.open_dir(parent)
        except FileNotFoundError:
            return
        try:
            if not hostfs.remove_mount_dir(fd, name):
                return
        except OSError as exc:
            log.warning("left %s in place: %s", path, exc.strerror or exc)
            return
        finally:
            os.close(fd)
        self.steps.done("rmdir", path)

    def apply_owner(self, dataset: str, path: str, uid: int, gid: int, mode: int) -> None:
        """Give the root of ``dataset`` mounted at ``path`` its owner and mode, through a
        descriptor checked to be that root (never a link, never a directory inside it);
        touch nothing that is already right (a needless chown would change the
        directory's ctime, which would look like a change to it)."""
        self.guard.check_place(path)
        with self._parent(path) as (parent_fd, name):
            root = hostfs.open_mounted_root(parent_fd, name, dataset)
            try:
                st = os.fstat(root)
                hostfs.chown_root(root, dataset, uid, gid, mode)
            finally:
                os.close(root)
        if (st.st_uid, st.st_gid) != (uid, gid):
            self.steps.done("chown", path)
        if st.st_mode & 0o7777 != mode:
            self.steps.done("chmod", path)


def _exists_at(dirfd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True
