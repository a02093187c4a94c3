"""The C library, loaded once, for the few system calls Python's ``os`` module lacks:
mount(2)/umount2(2) and prctl(2) (``_zfs``), sync_file_range(2) (``transfer.export``) and
inotify (``transfer.digests``)."""

from __future__ import annotations

import ctypes
import functools


@functools.cache
def libc() -> ctypes.CDLL:
    # dlopen(NULL): the symbols the interpreter is already linked with, the C library's
    # among them. Not ctypes.util.find_library("c"): it runs `ldconfig -p` in a child
    # process (and imports subprocess and shutil), which under emulation cost every
    # command that talks to ZFS ~50 ms before its first system call.
    return ctypes.CDLL(None, use_errno=True)
