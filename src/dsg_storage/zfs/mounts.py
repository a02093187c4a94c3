"""Mounts as the kernel shows them (``/proc/self/mountinfo``) and the system calls that
change them (mount(2)/umount2(2) with ZFS's ``zfsutil`` option, as ``zfs mount`` does:
libzfs_core has no mount call)."""

from __future__ import annotations

import ctypes
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

from .._libc import libc

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MNT_DETACH = 2
# A dataset's properties that ``zfs mount`` turns into mount(2) flags: the value that sets the flag.
MOUNT_FLAG_PROPS = {
    "setuid": ("off", MS_NOSUID),
    "devices": ("off", MS_NODEV),
    "exec": ("off", MS_NOEXEC),
    "readonly": ("on", MS_RDONLY),
}


class Syscalls:
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

    def umount(self, target: str, *, lazy: bool = False) -> None:
        """umount2(2); ``lazy`` (MNT_DETACH) takes the mount off its path at once, and
        the filesystem stays reachable for whoever still has a directory or file open in
        it, until the last of them lets go."""
        if self.lib.umount2(target.encode(), MNT_DETACH if lazy else 0) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), target)

    def remount(self, target: str, *, readonly: bool, flags: int = 0) -> None:
        """Remount the filesystem at ``target`` read-only or read-write (the kernel refuses
        read-only with EBUSY while a file is open for writing). A remount sets the mount's
        flags anew: ``flags`` are the ones to keep (nosuid, nodev...)."""
        flags = MS_REMOUNT | (flags & ~MS_RDONLY) | (MS_RDONLY if readonly else 0)
        # ZFS re-reads its mount options on a remount: say ro/rw there too, or its
        # readonly property (off) would win over the flag.
        if self.lib.mount(None, target.encode(), None, flags, b"ro" if readonly else b"rw") != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), target)


def _unescape_mountinfo(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def zfs_mount_entries() -> Iterator[tuple[str, str]]:
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
    for dataset, path in zfs_mount_entries():
        mounts.setdefault(dataset, []).append(path)
    return mounts


def mount_stack(path: str) -> list[str]:
    """Sources of the ZFS mounts at exactly ``path``, bottom first."""
    return [dataset for dataset, mounted in zfs_mount_entries() if mounted == path]


#: Where a Reader mounts what it reads privately: the reader's pid is in the name, so
#: that what a killed reader left behind can be told from what a live one uses.
READER_DIR_PREFIX = "dsg-storage-read-"
_READER_DIR = re.compile(rf"/{READER_DIR_PREFIX}([0-9]+)-[^/]+/")


def reader_dir_prefix() -> str:
    return f"{READER_DIR_PREFIX}{os.getpid()}-"


def orphaned_reader_mounts() -> list[tuple[str, str]]:
    """(source, path) of the read-only mounts of Readers whose process is gone."""
    found = []
    for source, path in zfs_mount_entries():
        match = _READER_DIR.search(path)
        if match and not os.path.exists(f"/proc/{match[1]}"):
            found.append((source, path))
    return found


def holders_of(path: str, *, writing: bool = False) -> list[str]:
    """Processes whose cwd, root or open files are at or under ``path`` ("pid (comm)");
    with ``writing``, only those with a file there open for writing."""
    found = []
    prefix = path.rstrip("/") + "/"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            fds = list((entry / "fd").iterdir())
            links = fds if writing else [entry / "cwd", entry / "root", *fds]
            targets = [(link, os.readlink(link)) for link in links]
            comm = (entry / "comm").read_text().strip()
            inside = [link for link, t in targets if t == path or t.startswith(prefix)]
            if writing:
                inside = [link for link in inside if _open_for_writing(entry, link.name)]
        except OSError:
            continue  # the process ended or is not ours to inspect
        if inside:
            found.append(f"{entry.name} ({comm})")
    return found


def _open_for_writing(process: Path, fd: str) -> bool:
    flags = next(line for line in (process / "fdinfo" / fd).read_text().splitlines() if line.startswith("flags:"))
    return int(flags.split()[1], 8) & os.O_ACCMODE != os.O_RDONLY
