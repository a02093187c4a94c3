"""The pool's backing file and the record of its GUID: where they may live, how they are made and checked.

Root imports the pool in a backing file, and ZFS mounts what the pool says. A file some
local user left where the tool looks (with a dataset at ``mountpoint=/etc/cron.d``, say)
must never be imported, so the tool only ever reuses a file it made itself:

- The file lives in a directory only root can change: every directory from ``/`` to it
  is root's (the current user's) and writable by nobody else (a sticky one such as
  ``/var/tmp`` may be passed through, not ended in), reached without following a link;
  missing ones are created 0700 (``open_root_dir``).
- The file is created ``O_CREAT|O_EXCL|O_NOFOLLOW`` mode 0600 there; an existing one is
  opened ``O_NOFOLLOW`` and must be a regular file of ours with one link, writable by
  nobody else (``check_image``).
- When the tool creates the pool it records the pool's GUID beside the file
  (``NAME.guid``, created the same way). An existing file is imported only by that GUID
  (``verdict``): a file without a record, or holding another pool, is refused, naming the
  file and saying to remove it.

Once those checks pass, ZFS may open the file by its path: nobody but root can swap
what the path names in that directory. Standard library only.

After a crash: between creating the pool and writing its record, the file is left
without a record; the next ``create`` refuses it and says to remove it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import re
import stat

RECORD_SUFFIX = ".guid"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_GUID = re.compile(r"^[0-9]{1,20}\n?$")


class UnsafeFileError(RuntimeError):
    """A path the tool would act on as root is not one only root controls; nothing was done with it."""


def _writable_by_others(st: os.stat_result) -> bool:
    return bool(st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def _components(path: str) -> list[str]:
    if not path.startswith("/") or "\0" in path:
        raise UnsafeFileError(f"{path!r} is not an absolute path")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeFileError(f"{path}: '..' is not accepted here")
    return parts


def check_dir(st: os.stat_result, where: str, *, euid: int, last: bool) -> None:
    """Refuse a directory on the way to the backing file that someone else could change."""
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeFileError(f"{where} is not a directory")
    if st.st_uid != euid:
        raise UnsafeFileError(
            f"{where} is owned by uid {st.st_uid}, who could swap what lies beneath it: "
            "use a directory only root can change"
        )
    # A sticky directory lets nobody rename or remove what others own in it; it does let
    # anyone create the next component first, which the owner check on that one catches.
    if _writable_by_others(st) and (last or not st.st_mode & stat.S_ISVTX):
        raise UnsafeFileError(
            f"{where} is writable by others (mode {stat.S_IMODE(st.st_mode):04o}): use a directory only root can change"
        )


def open_root_dir(path: str, *, create: bool = True, mode: int = 0o700) -> int:
    """A descriptor for directory ``path``, reached without following a link, every
    directory from ``/`` to it checked by ``check_dir``; missing ones are created with
    ``mode`` (unless ``create`` is off: FileNotFoundError)."""
    euid = os.geteuid()
    parts = _components(path)
    current = os.open("/", _DIR_FLAGS)
    where = "/"
    try:
        check_dir(os.fstat(current), where, euid=euid, last=not parts)
        for i, name in enumerate(parts):
            where = posixpath.join(where, name)
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, mode, dir_fd=current)
            try:
                nxt = os.open(name, _DIR_FLAGS, dir_fd=current)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise UnsafeFileError(f"{where} is a symbolic link or not a directory") from None
                exc.filename = where
                raise
            os.close(current)
            current = nxt
            check_dir(os.fstat(current), where, euid=euid, last=i == len(parts) - 1)
        result, current = current, -1
        return result
    finally:
        if current >= 0:
            os.close(current)


def _open_existing(dirfd: int, name: str, where: str) -> int | None:
    """``name`` in ``dirfd`` opened read-only without following a link; None if missing."""
    try:
        return os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dirfd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeFileError(
                f"{where} is a symbolic link: remove it (rm {where}); the tool never follows one"
            ) from None
        raise


def check_image(st: os.stat_result, where: str, *, euid: int) -> None:
    """Refuse a backing file the tool cannot have created: not a regular file, not the
    current user's (root's), with more than one link, or writable by group or others."""
    problem = None
    if not stat.S_ISREG(st.st_mode):
        problem = "is not a regular file"
    elif st.st_uid != euid:
        problem = f"is owned by uid {st.st_uid}, not by uid {euid}"
    elif st.st_nlink != 1:
        problem = f"has {st.st_nlink} links"
    elif _writable_by_others(st):
        problem = f"is writable by others (mode {stat.S_IMODE(st.st_mode):04o})"
    if problem:
        raise UnsafeFileError(
            f"{where} {problem}: this tool did not create it and will not use it; "
            f"remove it (rm {where}) if it is not needed, or name another file with --file"
        )


def open_image(dirfd: int, name: str, where: str) -> int | None:
    """The existing backing file ``name`` of ``dirfd``, opened and checked (``check_image``); None if missing."""
    fd = _open_existing(dirfd, name, where)
    if fd is None:
        return None
    try:
        check_image(os.fstat(fd), where, euid=os.geteuid())
    except BaseException:
        os.close(fd)
        raise
    return fd


def create_image(dirfd: int, name: str, size: int) -> None:
    """A new sparse backing file of ``size`` bytes, mode 0600; FileExistsError if one appeared meanwhile."""
    fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dirfd)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


def read_record(dirfd: int, name: str, where: str) -> str | None:
    """The GUID recorded for backing file ``name`` (in ``NAME.guid``), checked like the
    file itself; None when there is no record."""
    record, record_where = name + RECORD_SUFFIX, where + RECORD_SUFFIX
    fd = _open_existing(dirfd, record, record_where)
    if fd is None:
        return None
    try:
        check_image(os.fstat(fd), record_where, euid=os.geteuid())
        text = os.read(fd, 64).decode("ascii", "replace")
    finally:
        os.close(fd)
    if not _GUID.match(text):
        raise UnsafeFileError(
            f"{record_where} does not hold a pool GUID: remove it and {where} (rm {record_where} {where})"
        )
    return text.strip()


def write_record(dirfd: int, name: str, guid: str) -> None:
    """Record ``guid`` for backing file ``name``: ``NAME.guid``, created ``O_EXCL|O_NOFOLLOW`` 0600
    (a stale record of a file that is gone is removed first), then made durable."""
    record = name + RECORD_SUFFIX
    remove(dirfd, record)
    fd = os.open(record, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dirfd)
    try:
        os.write(fd, f"{guid}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.fsync(dirfd)


def remove(dirfd: int, name: str) -> bool:
    """Remove ``name`` of ``dirfd`` (unlinkat: a link is removed, never followed); False if it was gone."""
    try:
        os.unlink(name, dir_fd=dirfd)
    except FileNotFoundError:
        return False
    return True


def verdict(where: str, label_guid: str | None, recorded: str | None, pool: str) -> str:
    """The GUID to import from the existing, checked backing file ``where`` whose label
    names ``pool``: the one the tool recorded when it created that pool, and only if the
    file's label carries it. Anything else is refused (UnsafeFileError)."""
    remove_it = f"remove it (rm {where}{' ' + where + RECORD_SUFFIX if recorded is not None else ''})"
    if recorded is None:
        raise UnsafeFileError(
            f"{where} holds a {pool} pool that this tool did not create (no record {where}{RECORD_SUFFIX}): "
            f"refusing to import it; {remove_it} and run the command again to create a new pool"
        )
    if label_guid != recorded:
        raise UnsafeFileError(
            f"{where} holds pool GUID {label_guid}, not the GUID {recorded} this tool recorded when it created "
            f"its pool: refusing to import it; {remove_it} and run the command again to create a new pool"
        )
    return recorded
