"""The one map from what ZFS and the kernel report (an errno, a pyzfs exception) to
dsg-storage's errors. Every part of the boundary translates through it."""

from __future__ import annotations

import errno
import os
from typing import Any

from ..errors import (
    DatasetBusyError,
    DatasetExistsError,
    DatasetNotFoundError,
    DsgStorageError,
    InvalidNameError,
    NoSpaceError,
    PoolUnavailableError,
    ZfsError,
)

_BY_ERRNO: dict[int, type[ZfsError | InvalidNameError]] = {
    errno.ENOENT: DatasetNotFoundError,
    errno.EEXIST: DatasetExistsError,
    errno.EBUSY: DatasetBusyError,
    errno.ENOSPC: NoSpaceError,
    errno.EDQUOT: NoSpaceError,
    errno.ENXIO: PoolUnavailableError,
    errno.EIO: PoolUnavailableError,
    errno.ENAMETOOLONG: InvalidNameError,
}
# pyzfs exception classes whose errno alone would mislead (EINVAL for a bad name...).
_BY_PYZFS_CLASS = {
    "NameInvalid": InvalidNameError,
    "NameTooLong": InvalidNameError,
    "PoolNotFound": PoolUnavailableError,
}


class PoolReadOnly(Exception):
    """A channel program was refused because the pool is imported read-only (EROFS):
    the boundary then reads another way (``ProgramListing``, ``Zfs.together``)."""


class ProgramLimitError(ZfsError):
    """A read-only channel program ran past its instruction or memory limit (pyzfs's
    ``ZCPTimeout``, ``ZCPSpaceError``, ``ZCPMemoryError``): what it was asked to read is
    too big for one program (a snapshot with our properties takes ~1 KiB: pyzfs's default
    10 MiB ends at ~10,000, the kernel's largest, 100 MiB by default, at ~100,000). The
    listings then ask ``zfs`` instead (``ProgramListing``)."""


#: pyzfs's channel-program limit errors. A changing program's ENOSPC (``ZCPSpaceError``)
#: may also be a full pool, so only a read-only program's is taken for its limit.
PROGRAM_LIMITS = ("ZCPTimeout", "ZCPSpaceError", "ZCPMemoryError")


class DatasetChangedError(ZfsError):
    """A batch required a filesystem unchanged since a snapshot, and it was not."""

    def __init__(self, message: str, *, dataset: str, written: int) -> None:
        super().__init__(message, dataset=dataset)
        self.written = written


def error_class(code: int | None) -> type[DsgStorageError]:
    """The error class for an errno (ZfsError when none is more precise)."""
    return _BY_ERRNO.get(code or 0, ZfsError)


def from_errno(code: int | None, message: str, dataset: str | None) -> DsgStorageError:
    """One of our errors for ``code``, saying ``message`` (the errno's text appended)."""
    reason = os.strerror(code) if code else "unknown error"
    return error_class(code)(f"{message}: {reason}", dataset=dataset)


def from_pyzfs(exc: BaseException, dataset: str) -> DsgStorageError:
    """Translate a pyzfs ``ZFSError`` raised for ``dataset``."""
    errors: Any = getattr(exc, "errors", None)
    if errors:  # pyzfs aggregates (SnapshotFailure...) carry one error per target
        exc = errors[0]
    text = f"{type(exc).__name__}: {getattr(exc, 'message', None) or exc}"
    cls = _BY_PYZFS_CLASS.get(type(exc).__name__) or error_class(getattr(exc, "errno", None))
    return cls(f"{dataset}: {text}", dataset=dataset)
