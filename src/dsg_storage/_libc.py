"""The C library, loaded once, for the few system calls Python's ``os`` module lacks:
mount(2)/umount2(2) and prctl(2) (``_zfs``), sync_file_range(2) (``_bundle``) and
inotify (``_bundle_format``)."""

from __future__ import annotations

import ctypes
import functools


@functools.cache
def libc() -> ctypes.CDLL:
    import ctypes.util  # here: it imports subprocess and shutil, which most commands never need

    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
