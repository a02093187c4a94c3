"""One hierarchy of errors. Each class also subclasses the builtin it means, so callers
can catch what they already know (``FileExistsError``, ``PermissionError``...)."""

from __future__ import annotations

import errno as _errno

TYPE_CHECKING = False  # not typing's: see dsg_storage/__init__.py
if TYPE_CHECKING:
    from typing import ClassVar


class DsgStorageError(Exception):
    """Base of every error dsg-storage raises.

    ``dataset`` names the dataset concerned (when one is), ``hint`` says what to do next.
    """

    #: errno for the classes that are also ``OSError``s; None for the others.
    errno_code: ClassVar[int | None] = None

    def __init__(self, message: str, *, dataset: str | None = None, hint: str | None = None) -> None:
        self.message = message
        self.dataset = dataset
        self.hint = hint
        if isinstance(self, OSError) and self.errno_code is not None:
            OSError.__init__(self, self.errno_code, message)
        else:
            super().__init__(message)

    def __str__(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message


class ZfsUnavailableError(DsgStorageError, RuntimeError):
    """ZFS cannot be used here: libzfs_core is not installed or /dev/zfs is missing."""


class InvalidNameError(DsgStorageError, ValueError):
    """A dataset, repository or snapshot name is not acceptable. Nothing was touched."""


class InvalidArgumentError(DsgStorageError, ValueError):
    """An argument other than a name (mode, owner, path...) is not acceptable."""


class NotAllowedError(DsgStorageError, PermissionError):
    """The dataset lies outside every pool/prefix the caller allowed. Nothing was touched."""

    errno_code = _errno.EPERM


class ReplicaError(NotAllowedError):
    """The repository is a replica (its properties were received from another host): the
    library recovers, mounts and changes it only when the caller says it is the primary."""


class UnsafePathError(NotAllowedError):
    """A path root would act on leads through a symbolic link, out of the directory it
    must stay beneath, or through a directory someone else controls. Nothing was touched."""


class PolicyError(NotAllowedError):
    """The sudo policy file is missing where one is required, unsafe (not root's,
    writable by others, reached through a link) or malformed. Nothing was done."""


class ZfsError(DsgStorageError, OSError):
    """A ZFS operation failed for a reason without a more precise class below."""

    errno_code = _errno.EIO


class DatasetNotFoundError(ZfsError, FileNotFoundError):
    errno_code = _errno.ENOENT


class DatasetExistsError(ZfsError, FileExistsError):
    errno_code = _errno.EEXIST


class DatasetBusyError(ZfsError):
    """A dataset stayed busy (mounted and in use, held, or with dependents) after retries."""

    errno_code = _errno.EBUSY


class NoSpaceError(ZfsError):
    """The pool or a quota ran out of space."""

    errno_code = _errno.ENOSPC


class PoolUnavailableError(ZfsError):
    """The pool is not imported, suspended or otherwise cannot be reached."""

    errno_code = _errno.ENXIO


class ReadOnlyError(DsgStorageError, PermissionError):
    """The pool is opened read-only (offline access): nothing may change. Nothing was changed."""

    errno_code = _errno.EROFS


class PoolNotFoundError(DsgStorageError, FileNotFoundError):
    """No exported pool was found on the search paths. Nothing was imported."""

    errno_code = _errno.ENOENT


class PoolOpenError(DsgStorageError, OSError):
    """A pool was found but cannot be opened (devices missing beyond its redundancy,
    damaged, or several pools match). Nothing was left imported or mounted."""

    errno_code = _errno.ENXIO


class PoolForeignError(PoolOpenError):
    """The pool was last used, and not exported, by another host; opening it could race
    that host. Nothing was imported."""


class CacheMissError(DsgStorageError, LookupError):
    """A cached read was asked for, but the cache holds no such read."""


class RepositoryNotFoundError(DsgStorageError, FileNotFoundError):
    """The repository's dataset does not exist."""

    errno_code = _errno.ENOENT


class TransactionError(DsgStorageError, RuntimeError):
    """A transaction cannot proceed as asked."""


class TransactionNotFoundError(TransactionError, LookupError):
    """No open transaction of that id exists on the repository."""


class TransactionStateError(TransactionError):
    """The transaction was already committed or rolled back in this process."""


class TransactionInProgressError(TransactionError, FileExistsError):
    """The repository already has an open transaction (one writer per repository)."""

    errno_code = _errno.EEXIST


class CorruptStateError(TransactionError):
    """The pool records a transaction state this version cannot read (a property missing
    or malformed: written by hand, or by something else). Nothing was changed."""


class ConflictError(TransactionError):
    """The repository changed after the transaction began; committing would lose that
    change. Nothing was changed; roll the transaction back."""


class RepositoryBusyError(TransactionError, BlockingIOError):
    """Another process on this host is in the middle of a step on the repository."""

    errno_code = _errno.EAGAIN


class QueueItemNotFoundError(DsgStorageError, LookupError):
    """No queue item has that id."""


class QueueFullError(DsgStorageError, OSError):
    """The queue holds its maximum of pending items: the new work was refused, not
    queued, and nothing queued before was dropped."""

    errno_code = _errno.ENOSPC


class MetricsUnavailableError(DsgStorageError, RuntimeError):
    """Metrics were asked for, but the prometheus_client package is not installed."""


class BundleError(DsgStorageError, ValueError):
    """A bundle file cannot be used. Nothing was changed."""


class NotABundleError(BundleError):
    """The file is not a dsg-storage bundle (it does not start with the bundle magic)."""


class BundleVersionError(BundleError):
    """The bundle was made by a newer dsg-storage, in a format version this one cannot read."""


class BundleTruncatedError(BundleError, EOFError):
    """The bundle ends before its end: an interrupted export or copy.

    MRO: BundleError, DsgStorageError, ValueError, EOFError; not an OSError, so
    ``DsgStorageError.__init__`` takes its plain ``Exception`` branch."""


class BundleCorruptError(BundleError):
    """A checksum or the structure of the bundle does not match: its bytes were damaged."""


class LockFileError(DsgStorageError, ValueError):
    """A lock file cannot be read: not a lock file, a newer format version, bad JSON or missing fields."""
