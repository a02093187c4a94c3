"""Mounts as the kernel shows them (``/proc/self/mountinfo``) and the system calls that
change them (mount(2)/umount2(2) with ZFS's ``zfsutil`` option, as ``zfs mount`` does:
libzfs_core has no mount call)."""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Iterator
from pathlib import Path

from .._libc import libc


class Syscalls:
    def __init__(self) -> None:
        self.lib = libc()
        self.lib.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
        self.lib.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]

    def mount(self, source: str, target: str, fstype: str, data: str, *, readonly: bool = False) -> None:
        flags = 1 if readonly else 0  # MS_RDONLY
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
