"""Filesystem work root does on paths other users may control, without following links.

Every function here resolves a path component by component (``openat2(2)`` with
``RESOLVE_NO_SYMLINKS``/``RESOLVE_BENEATH`` where the kernel has it, else a walk of
``O_NOFOLLOW`` opens) and then acts on the *descriptor* it checked, never on the path
again: a directory swapped for a symlink after the check changes nothing.

- ``open_dir`` / ``open_beneath``: a descriptor for a path with no symlink in it,
  optionally checking who owns each directory on the way (``trusted_uids``).
- ``check_mount_parent``: the parent of a mountpoint, refused unless every directory
  from ``/`` to it is root's and writable by nobody else (see ``docs/archive/0011-sudo-policy.md``).
- ``make_mount_dir``, ``mount_at``, ``open_mounted_root``, ``verify_dataset_root``,
  ``chown_root``, ``remove_mount_dir``: mounting a dataset onto a checked directory through
  ``/proc/self/fd/N`` and giving its root an owner.
- ``check_root_only``: a file root will run or import from later (a zedlet's command),
  refused unless root alone can change it and every directory above it.
- ``private_dir`` / ``private_file``: state files (locks, queue, cache) in a directory
  only the current user can change, mode 0600.
- ``as_user`` and ``OutputFile``: files written for the user who ran ``sudo``, created
  as that user, never through a link, never replacing a file unless asked.

After a crash: nothing here leaves more than an empty directory (``make_mount_dir``) or
a ``.NAME.partial-*`` file beside an output (``OutputFile``); both are safe to remove.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import posixpath
import stat
from collections.abc import Collection, Iterator

TYPE_CHECKING = False  # not typing's: see dsg_storage/__init__.py
if TYPE_CHECKING:
    from typing import Self

from ._libc import libc
from .errors import DsgStorageError, InvalidArgumentError, NotAllowedError, UnsafePathError

SYS_OPENAT2 = 437  # the same number on every architecture (added after the syscall table unification)
RESOLVE_NO_XDEV, RESOLVE_NO_MAGICLINKS, RESOLVE_NO_SYMLINKS, RESOLVE_BENEATH = 0x01, 0x02, 0x04, 0x08
ZFS_SUPER_MAGIC = 0x2FC12FC1
RENAME_NOREPLACE = 1
AT_FDCWD = -100
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_openat2_missing = False  # set once the kernel said ENOSYS: every later call walks


def openat2(dirfd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int | None:
    """``openat2(2)``; None when this kernel (or a seccomp filter) lacks it. OSError otherwise."""
    global _openat2_missing
    if _openat2_missing:
        return None
    how = _OpenHow(flags | os.O_CLOEXEC, mode if flags & os.O_CREAT else 0, resolve)
    fn = libc().syscall
    fn.restype = ctypes.c_long
    fd = int(
        fn(
            ctypes.c_long(SYS_OPENAT2),
            ctypes.c_int(dirfd),
            ctypes.c_char_p(os.fsencode(path)),
            ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        )
    )
    if fd >= 0:
        return fd
    code = ctypes.get_errno()
    if code == errno.ENOSYS:  # before Linux 5.6, or a seccomp filter that does not know it
        _openat2_missing = True
        return None
    raise OSError(code, os.strerror(code), path)


def _components(path: str) -> list[str]:
    """The components of a relative path; ``..`` is refused, ``.`` and empty ones dropped."""
    if "\0" in path:
        raise InvalidArgumentError(f"path {path!r} contains a NUL byte")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafePathError(f"{path}: '..' is not accepted here")
    return parts


def _is_writable_by_others(st: os.stat_result) -> bool:
    return bool(st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def _check_dir(st: os.stat_result, where: str, trusted_uids: Collection[int] | None, last: bool) -> None:
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePathError(f"{where} is not a directory")
    if trusted_uids is None:
        return
    if st.st_uid not in trusted_uids:
        raise UnsafePathError(
            f"{where} is owned by uid {st.st_uid}, who could swap what lies beneath it",
            hint="use a directory owned by root",
        )
    # A sticky world-writable directory (/tmp) lets nobody else rename or remove what
    # we then check to be trusted; it does let anyone plant the last component itself.
    if _is_writable_by_others(st) and (last or not st.st_mode & stat.S_ISVTX):
        raise UnsafePathError(
            f"{where} is writable by others (mode {stat.S_IMODE(st.st_mode):04o})",
            hint="use a directory only root can write to",
        )


def _walk(dirfd: int, parts: list[str], flags: int, base: str, trusted_uids: Collection[int] | None) -> int:
    """Open ``parts`` below ``dirfd`` one ``O_NOFOLLOW`` step at a time, fstat-checking
    every directory passed through (the very inode the next step is taken from)."""
    current = os.dup(dirfd)
    where = base
    try:
        if trusted_uids is not None:
            _check_dir(os.fstat(current), where, trusted_uids, last=not parts)
        for i, name in enumerate(parts):
            where = posixpath.join(where, name)
            final = i == len(parts) - 1
            step = flags | os.O_NOFOLLOW | os.O_CLOEXEC if final else os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                nxt = os.open(name, step, dir_fd=current)
            except OSError as exc:
                raise _translate(exc, where, name, current) from None
            os.close(current)
            current = nxt
            st = os.fstat(current)
            if stat.S_ISLNK(st.st_mode):  # O_PATH|O_NOFOLLOW opens a link itself
                raise UnsafePathError(f"{where} is a symbolic link")
            if not final or flags & os.O_DIRECTORY:
                _check_dir(st, where, trusted_uids, last=final and trusted_uids is not None)
        result, current = current, -1
        return result
    finally:
        if current >= 0:
            os.close(current)


def _translate(exc: OSError, where: str, name: str = "", dirfd: int = -1) -> OSError:
    if exc.errno == errno.ENOTDIR and dirfd >= 0:  # O_DIRECTORY|O_NOFOLLOW on a link says ENOTDIR
        with contextlib.suppress(OSError):
            if stat.S_ISLNK(os.stat(name, dir_fd=dirfd, follow_symlinks=False).st_mode):
                return UnsafePathError(f"{where} is a symbolic link")
    if exc.errno == errno.ELOOP:
        return UnsafePathError(f"{where} leads through a symbolic link")
    if exc.errno == errno.EXDEV:
        return UnsafePathError(f"{where} leads outside the directory it must stay beneath")
    exc.filename = where
    return exc


def open_beneath(dirfd: int, path: str, flags: int = os.O_RDONLY, *, base: str = ".") -> int:
    """A descriptor for ``path`` (relative) inside the directory ``dirfd``, refusing
    ``..`` and every symbolic link on the way, the last component included (lstat
    semantics: a link is never what is opened). ``base`` names ``dirfd`` in errors."""
    parts = _components(path)
    if not parts:
        return os.open(".", flags | os.O_CLOEXEC, dir_fd=dirfd)
    relative = "/".join(parts)
    try:
        fd = openat2(dirfd, relative, flags, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)
    except OSError as exc:
        raise _translate(exc, posixpath.join(base, relative)) from None
    if fd is not None:
        if flags & os.O_PATH and stat.S_ISLNK(os.fstat(fd).st_mode):
            os.close(fd)
            raise UnsafePathError(f"{posixpath.join(base, relative)} is a symbolic link")
        return fd
    return _walk(dirfd, parts, flags, base, None)


def absolute_path(path: str) -> str:
    """``path`` normalised (``//a/./b/`` -> ``/a/b``), the form every check here compares;
    InvalidArgumentError unless it is absolute, UnsafePathError if it has a ``..``."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise InvalidArgumentError(f"{path!r} is not an absolute path")
    normal = posixpath.normpath(path)
    if normal.startswith("//"):
        normal = "/" + normal.lstrip("/")
    if ".." in path.split("/"):
        raise UnsafePathError(f"{path}: '..' is not accepted here")
    return normal


def open_dir(path: str, flags: int = _DIR, *, trusted_uids: Collection[int] | None = None) -> int:
    """A descriptor for the directory at absolute ``path``, reached without following any
    symbolic link. With ``trusted_uids``, every directory from ``/`` to ``path`` must be
    owned by one of them and not writable by group or others (a sticky directory such as
    ``/tmp`` may be passed through, not ended in)."""
    parts = _components(absolute_path(path))
    root = os.open("/", _DIR)
    try:
        if trusted_uids is None:
            fd = None
            try:
                fd = openat2(root, "/".join(parts) or ".", flags | os.O_DIRECTORY, RESOLVE_NO_SYMLINKS)
            except OSError as exc:
                raise _translate(exc, path) from None
            if fd is not None:
                return fd
        return _walk(root, parts, flags | os.O_DIRECTORY, "/", trusted_uids)
    finally:
        os.close(root)


def check_mount_parent(mountpoint: str, *, trusted_uids: Collection[int] = (0,)) -> tuple[int, str]:
    """``(fd of the mountpoint's parent, last component)``, refused (UnsafePathError)
    unless every directory from ``/`` to the parent is owned by a trusted uid (root) and
    writable by nobody else. Then nobody but root can swap the mountpoint or the
    workspace path beside it, now or at a later remount by path (``zfs mount -a`` at boot
    follows links); see ``docs/archive/0011-sudo-policy.md``."""
    normal = absolute_path(mountpoint)
    parent, name = posixpath.split(normal)
    if not name:
        raise InvalidArgumentError("mountpoint '/' is refused")
    return open_dir(parent, trusted_uids=trusted_uids), name


def make_mount_dir(parent_fd: int, name: str, mode: int = 0o755) -> int:
    """Create directory ``name`` in ``parent_fd`` if missing (``mkdirat``) and return a
    descriptor for it, refusing a symbolic link or anything that is not a directory."""
    _single(name)
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, mode, dir_fd=parent_fd)
    try:
        return os.open(name, _DIR | os.O_NOFOLLOW, dir_fd=parent_fd)
    except OSError as exc:
        raise _translate(exc, name, name, parent_fd) from None


def _single(name: str) -> None:
    if not name or "/" in name or name in (".", "..") or "\0" in name:
        raise InvalidArgumentError(f"{name!r} is not a single path component")


def mount_at(source: str, dirfd: int, data: str = "zfsutil", flags: int = 0, *, fstype: str = "zfs") -> None:
    """mount(2) ``source`` onto the directory ``dirfd`` refers to, through
    ``/proc/self/fd/N``: the kernel mounts on that very directory, whatever has been
    renamed or swapped since it was opened. ``flags`` are ``MS_*`` (1: read-only)."""
    fn = libc().mount
    fn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    target = f"/proc/self/fd/{dirfd}"
    if fn(source.encode(), target.encode(), fstype.encode(), flags, data.encode()) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), target)


def fs_magic(fd: int) -> int:
    """``f_type`` of fstatfs(2) (the first field of ``struct statfs`` on Linux)."""
    buf = ctypes.create_string_buffer(256)
    fn = libc().fstatfs
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p]
    if fn(fd, buf) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def _mount_devices(dataset: str) -> set[int]:
    """st_dev of every mount of ``dataset``'s root (``/proc/self/mountinfo``)."""
    devices = set()
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            fields, _, rest = line.partition(" - ")
            left, right = fields.split(), rest.split()
            if len(left) >= 5 and len(right) >= 2 and right[0] == "zfs" and left[3] == "/":
                source = right[1].replace("\\040", " ").replace("\\134", "\\")
                if source == dataset:
                    major, minor = left[2].split(":")
                    devices.add(os.makedev(int(major), int(minor)))
    return devices


def verify_dataset_root(fd: int, dataset: str) -> os.stat_result:
    """Check that ``fd`` is the root directory of ``dataset`` as mounted now: a ZFS
    filesystem (statfs magic), on the device of a mount of ``dataset``, and the top of
    that mount (its ``..`` is on another device). Raises UnsafePathError otherwise."""
    st = os.fstat(fd)
    if not stat.S_ISDIR(st.st_mode) or fs_magic(fd) != ZFS_SUPER_MAGIC:
        raise UnsafePathError(f"the directory to give an owner is not a ZFS filesystem (expected {dataset})")
    if st.st_dev not in _mount_devices(dataset):
        raise UnsafePathError(f"the directory to give an owner is not {dataset}'s (another filesystem)")
    up = os.stat("..", dir_fd=fd, follow_symlinks=False)
    if up.st_dev == st.st_dev and up.st_ino != st.st_ino:
        raise UnsafePathError(f"the directory to give an owner is inside {dataset}, not its root")
    return st


def open_mounted_root(parent_fd: int, name: str, dataset: str) -> int:
    """After ``mount_at``: a descriptor for the root of ``dataset`` mounted on ``name`` of
    ``parent_fd`` (the descriptor ``mount_at`` was given still shows the directory under
    the mount). Looked up without following a link, and verified (``verify_dataset_root``)."""
    _single(name)
    try:
        fd = os.open(name, _DIR | os.O_NOFOLLOW, dir_fd=parent_fd)
    except OSError as exc:
        raise _translate(exc, name, name, parent_fd) from None
    try:
        verify_dataset_root(fd, dataset)
    except BaseException:
        os.close(fd)
        raise
    return fd


def chown_root(fd: int, dataset: str, uid: int, gid: int, mode: int) -> None:
    """Give the root of ``dataset`` (``fd``, verified by ``verify_dataset_root``) its owner
    and mode, through the descriptor; touches nothing already right (a needless chown
    changes the directory's ctime, which would look like a change to the repository)."""
    st = verify_dataset_root(fd, dataset)
    if (st.st_uid, st.st_gid) != (uid, gid):
        os.fchown(fd, uid, gid)
    if stat.S_IMODE(st.st_mode) != mode:
        os.fchmod(fd, mode)


def remove_mount_dir(parent_fd: int, name: str) -> bool:
    """Remove the empty directory ``name`` of ``parent_fd`` (unlinkat AT_REMOVEDIR, which
    never follows a link); False if it was gone already. A non-empty one raises OSError."""
    _single(name)
    try:
        os.rmdir(name, dir_fd=parent_fd)
    except FileNotFoundError:
        return False
    except NotADirectoryError:
        raise UnsafePathError(f"{name} is not a directory (a symbolic link?): left alone") from None
    return True


MAX_LINKS = 8


def check_root_only(path: str, *, max_links: int = MAX_LINKS) -> tuple[str, os.stat_result]:
    """``(the path checked, its lstat)`` for what ``path`` names (its symbolic links
    followed, as below), refused (UnsafePathError) unless only root
    can change it, now or later: every directory from ``/`` to it is root's and writable
    by nobody else, reached without a symbolic link, and it itself is root's and
    writable by nobody else. For paths root will run or import from long after they
    were named (a zedlet's command, its ``PYTHONPATH``).

    A symbolic link as the *last* component (``/usr/bin/python3 -> python3.11``, a
    venv's ``bin/python``) can be changed only by whoever can write its directory, which
    was just checked to be root alone; it is followed, and its target checked the same
    way (at most ``max_links`` links; a target with ``..`` is refused, since lexical
    ``..`` and the kernel's can differ). A missing path raises FileNotFoundError."""
    normal = absolute_path(path)
    for _ in range(max_links + 1):
        parent, name = posixpath.split(normal)
        dirfd = open_dir(parent, trusted_uids=(0,))
        try:
            if not name:  # "/", checked by open_dir
                return normal, os.fstat(dirfd)
            try:
                st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            except OSError as exc:
                raise _translate(exc, normal) from None
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(name, dir_fd=dirfd)
                if ".." in target.split("/"):
                    raise UnsafePathError(
                        f"{normal} is a symbolic link to {target}, with '..' in it", hint="name its target itself"
                    )
                normal = absolute_path(posixpath.join(parent, target))
                continue
        finally:
            os.close(dirfd)
        if st.st_uid != 0:
            raise UnsafePathError(f"{normal} is owned by uid {st.st_uid}, not by root", hint=f"chown root {normal}")
        if _is_writable_by_others(st):
            raise UnsafePathError(
                f"{normal} is writable by others (mode {stat.S_IMODE(st.st_mode):04o})", hint=f"chmod go-w {normal}"
            )
        return normal, st
    raise UnsafePathError(f"{path} leads through more than {max_links} symbolic links")


# ---------------------------------------------------------------------- state files
def private_dir(path: str, *, narrow: bool = True) -> int:
    """A descriptor for directory ``path``, created (mode 0700, missing parents too) if
    missing, refused unless every directory above it is the current user's or root's and
    writable by nobody else (sticky ones excepted), and it itself is the current user's.
    An existing one wider than 0700 is narrowed to 0700 (state directories of our own,
    e.g. a ``/var/lib/dsg-storage`` an older version made 0755); with ``narrow`` off (a
    directory the user chose, such as their home for a cache) it is left as it is, and
    refused only if group or others may write to it."""
    me = os.geteuid()
    parts = _components(absolute_path(path))
    trusted = {0, me}
    current = os.open("/", _DIR)
    where = "/"
    try:
        _check_dir(os.fstat(current), where, trusted, last=not parts)
        for i, name in enumerate(parts):
            where = posixpath.join(where, name)
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o700, dir_fd=current)
            try:
                nxt = os.open(name, _DIR | os.O_NOFOLLOW, dir_fd=current)
            except OSError as exc:
                raise _translate(exc, where, name, current) from None
            os.close(current)
            current = nxt
            st = os.fstat(current)
            last = i == len(parts) - 1
            if last:
                if st.st_uid != me:
                    raise UnsafePathError(f"{where} is owned by uid {st.st_uid}, not by uid {me}")
                if narrow and stat.S_IMODE(st.st_mode) & 0o077:
                    os.fchmod(current, 0o700)
                elif _is_writable_by_others(st):
                    raise UnsafePathError(f"{where} is writable by others (mode {stat.S_IMODE(st.st_mode):04o})")
            else:
                _check_dir(st, where, trusted, last=False)
        result, current = current, -1
        return result
    finally:
        if current >= 0:
            os.close(current)


def private_file(dirfd: int, name: str, flags: int = os.O_RDWR) -> int:
    """Open state file ``name`` of the private directory ``dirfd``: created with
    ``O_CREAT|O_EXCL|O_NOFOLLOW`` mode 0600, or, existing, opened with ``O_NOFOLLOW`` and
    checked to be a regular file of ours with one link (narrowed to 0600 if wider)."""
    _single(name)
    try:
        return os.open(name, flags | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dirfd)
    except FileExistsError:
        pass
    try:
        fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
    except OSError as exc:
        raise _translate(exc, name) from None
    try:
        if _too_wide_state_file(os.fstat(fd), name):
            os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _too_wide_state_file(st: os.stat_result, name: str) -> bool:
    """Whether state file ``name`` (``st``) needs narrowing to 0600; UnsafePathError
    unless it is a regular file of ours with a single link."""
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_nlink != 1:
        raise UnsafePathError(f"state file {name} is not a regular file of ours with a single link")
    return bool(stat.S_IMODE(st.st_mode) & 0o077)


def private_path(path: str | os.PathLike[str], *, narrow: bool = True) -> str:
    """For libraries that open by name (SQLite): check/create the directory of ``path``
    with ``private_dir``, create the file with ``private_file``, and return the path.
    Only the current user (and root) can change that directory, so the name stays ours."""
    full = os.path.abspath(os.fspath(path))
    parent, name = posixpath.split(full)
    _single(name)
    dirfd = private_dir(parent, narrow=narrow)
    try:
        # An existing file is checked without opening it: closing any descriptor of a
        # file drops every POSIX lock this process holds on it, and SQLite's own
        # connection to it in this process (another Queue) relies on those locks.
        try:
            st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
        except FileNotFoundError:
            os.close(private_file(dirfd, name))  # new: nobody has it open yet
        else:
            if _too_wide_state_file(st, name):  # a regular file in a directory only we change
                os.chmod(name, 0o600, dir_fd=dirfd)
    finally:
        os.close(dirfd)
    return full


#: Where root keeps a private copy of a file it must read unchanged (``private_copy``):
#: the FHS's place for large temporary files, on disk (``/tmp`` may be memory).
COPY_DIR = "/var/tmp"


#: Free space a private copy leaves in its directory, at the least: others use it too.
COPY_MARGIN = 256 << 20


def _has_hole(fd: int, size: int) -> bool:
    """Whether the file has a hole (``SEEK_HOLE`` before its end): a sparse file costs its
    owner nothing, and would cost root its whole size written out."""
    try:
        return os.lseek(fd, 0, os.SEEK_HOLE) < size
    except OSError:  # a filesystem without SEEK_HOLE support reports no holes
        return False


@contextlib.contextmanager
def private_copy(fd: int, directory: str = COPY_DIR, *, max_size: int | None = None) -> Iterator[int]:
    """A read-only descriptor of a copy of the regular file ``fd`` that only this process
    could change: an unnamed file (``O_TMPFILE``, mode 0600) in ``directory``, copied by
    the kernel (``sendfile``), gone when closed. Costs one write of the whole file there.

    Bounded before a byte is written: a file larger than ``max_size``, a sparse file, or
    one that would leave less than ``COPY_MARGIN`` free in ``directory`` is refused
    (NotAllowedError / DsgStorageError); the copy stops at the size ``fstat`` gave, and
    a file that shrinks meanwhile is refused. After a crash nothing is left (unnamed)."""
    size = os.fstat(fd).st_size
    if max_size is not None and size > max_size:
        raise NotAllowedError(
            f"the file is {size:,} bytes, larger than the {max_size:,} allowed",
            hint="ask the administrator to raise [bundles] max_size in the policy",
        )
    if _has_hole(fd, size):
        raise InvalidArgumentError("the file is sparse (it has holes): a bundle never has any")
    try:
        vfs = os.statvfs(directory)
    except OSError as exc:
        raise DsgStorageError(f"cannot make a private copy in {directory}: {exc.strerror}") from None
    free = vfs.f_bavail * vfs.f_frsize
    if free < size + COPY_MARGIN:
        raise DsgStorageError(
            f"cannot make a private copy in {directory}: {size:,} bytes needed, {free:,} free "
            f"(and {COPY_MARGIN:,} left for others)",
            hint=f"free space in {directory}",
        )
    try:
        copy = os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise DsgStorageError(f"cannot make a private copy in {directory}: {exc.strerror}") from None
    try:
        offset = 0
        try:
            while offset < size and (sent := os.sendfile(copy, fd, offset, min(1 << 30, size - offset))):
                offset += sent
        except OSError as exc:  # e.g. ENOSPC: the copy needs the file's size there
            raise DsgStorageError(
                f"cannot make a private copy in {directory}: {exc.strerror} after {offset:,} bytes",
                hint=f"free space in {directory}",
            ) from None
        if offset < size:
            raise InvalidArgumentError(f"the file shrank from {size:,} to {offset:,} bytes while it was copied")
        # Read-only from here on: with no writer left, a read lease can be had on it (the
        # importer's check that nobody is writing), and the copy lives as long as this.
        reader = os.open(f"/proc/self/fd/{copy}", os.O_RDONLY | os.O_CLOEXEC)
        os.close(copy)
        copy = reader
        yield copy
    finally:
        os.close(copy)


# ---------------------------------------------------------------------- the invoking user
@contextlib.contextmanager
def as_user(uid: int, gid: int) -> Iterator[None]:
    """Run the block with the effective uid/gid (and groups) of ``uid``: what it creates
    is theirs, and it can reach only what they can. Root only; restored afterwards."""
    if os.geteuid() != 0 or uid == 0:
        yield
        return
    groups = os.getgroups()
    try:
        import pwd

        user_groups = os.getgrouplist(pwd.getpwuid(uid).pw_name, gid)
    except KeyError:
        user_groups = [gid]
    os.setgroups(user_groups)
    os.setegid(gid)
    os.seteuid(uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)
        os.setgroups(groups)


def renameat_noreplace(dirfd: int, old: str, new: str) -> None:
    """rename(2) within ``dirfd`` that fails with FileExistsError if ``new`` exists."""
    fn = libc().renameat2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(dirfd, os.fsencode(old), dirfd, os.fsencode(new), RENAME_NOREPLACE) == 0:
        return
    code = ctypes.get_errno()
    if code != errno.EINVAL:  # EINVAL: the filesystem lacks RENAME_NOREPLACE; link(2) is atomic too
        raise OSError(code, os.strerror(code), new)
    os.link(old, new, src_dir_fd=dirfd, dst_dir_fd=dirfd, follow_symlinks=False)
    os.unlink(old, dir_fd=dirfd)


def _lexists(name: str, dirfd: int) -> bool:
    try:
        os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


class OutputFile:
    """A file the command writes for its caller (``-o``, a lock file): written under a
    temporary name ``.NAME.partial-XXXX`` beside it (``O_CREAT|O_EXCL|O_NOFOLLOW`` in a
    directory reached without links), made durable, then renamed onto ``NAME``, which it
    replaces only with ``replace``. With ``owner`` (uid, gid) every step runs as that
    user (``as_user``), so the file is theirs and lands only where they could write.

    After a crash: at most the ``.partial`` file is left; the target is old or new."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        replace: bool = True,
        owner: tuple[int, int] | None = None,
        mode: int = 0o644,
    ) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self.replace = replace
        self.owner = owner
        self.mode = mode
        self.fd = -1
        self._dirfd = -1
        self._partial = ""

    def _as_owner(self) -> contextlib.AbstractContextManager[None]:
        return as_user(*self.owner) if self.owner else contextlib.nullcontext()

    def open(self) -> int:
        """Create the temporary file; its descriptor (also ``self.fd``) is written to."""
        parent, name = posixpath.split(self.path)
        _single(name)
        with self._as_owner():
            self._dirfd = open_dir(parent) if self.owner else os.open(parent, _DIR)
            if not self.replace and _lexists(name, self._dirfd):
                self._close_dir()
                raise FileExistsError(errno.EEXIST, "exists already (--force replaces it)", self.path)
            self._partial = f".{name}.partial-{os.urandom(4).hex()}"
            flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            self.fd = os.open(self._partial, flags, self.mode, dir_fd=self._dirfd)
            os.fchmod(self.fd, self.mode)  # not narrowed by the umask
        return self.fd

    def publish(self) -> None:
        """fsync, rename onto the target (refused if it exists and not ``replace``), fsync the directory."""
        os.fsync(self.fd)
        name = posixpath.basename(self.path)
        with self._as_owner():
            try:
                if self.replace:
                    os.replace(self._partial, name, src_dir_fd=self._dirfd, dst_dir_fd=self._dirfd)
                else:
                    renameat_noreplace(self._dirfd, self._partial, name)
            except FileExistsError:
                raise FileExistsError(errno.EEXIST, "exists already (--force replaces it)", self.path) from None
            self._partial = ""
            os.fsync(self._dirfd)
        self.close()

    def remove_beside(self, suffix: str) -> None:
        """Remove ``NAME + suffix`` (a stale ``.sig``) from the directory opened by
        ``open``, as the owner: never by path again, never through a link."""
        name = posixpath.basename(self.path) + suffix
        _single(name)
        with self._as_owner(), contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self._dirfd)

    def discard(self) -> None:
        """Remove the temporary file (after a failure)."""
        if self._partial and self._dirfd >= 0:
            with self._as_owner(), contextlib.suppress(FileNotFoundError):
                os.unlink(self._partial, dir_fd=self._dirfd)
            self._partial = ""
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self._close_dir()

    def _close_dir(self) -> None:
        if self._dirfd >= 0:
            os.close(self._dirfd)
            self._dirfd = -1

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.publish()
        else:
            self.discard()
