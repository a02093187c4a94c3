"""dsg-storage: transactional changes to ZFS-backed data repositories.

    from dsg_storage import Repository

    repo = Repository("tank/data/survey", allow="tank/data")
    with repo.begin(mountpoint="/srv/survey", owner="1000:1000", mode="0750") as tx:
        (Path(tx.path) / "results.csv").write_text(...)
    # committed: /srv/survey holds results.csv; an exception in the block rolls back

All ZFS work goes through libzfs_core (module ``libzfs_core``, OS package
``python3-pyzfs``); see ``dsg_storage.zfs`` for the few things done otherwise.
"""

from ._version import __version__
from .core.options import Owner
from .core.prune import PruneResult, mark_keep, prune
from .core.records import Commit, Pattern, PendingTransaction, Phase, RepositoryStatus, State
from .core.repository import Repository, begin
from .core.retention import Policy as RetentionPolicy
from .core.retention import plan as plan_retention
from .core.transaction import Transaction
from .errors import (
    BundleCorruptError,
    BundleError,
    BundleTruncatedError,
    BundleVersionError,
    CacheMissError,
    ConflictError,
    CorruptStateError,
    DatasetBusyError,
    DatasetExistsError,
    DatasetNotFoundError,
    DsgStorageError,
    InvalidArgumentError,
    InvalidNameError,
    LockFileError,
    MetricsUnavailableError,
    NoSpaceError,
    NotABundleError,
    NotAllowedError,
    PolicyError,
    PoolForeignError,
    PoolNotFoundError,
    PoolOpenError,
    PoolUnavailableError,
    QueueFullError,
    QueueItemNotFoundError,
    ReadOnlyError,
    RepositoryBusyError,
    RepositoryNotFoundError,
    TransactionError,
    TransactionInProgressError,
    TransactionNotFoundError,
    TransactionStateError,
    UnsafePathError,
    ZfsError,
    ZfsUnavailableError,
)
from .policy import Policy, check_repository_props
from .queue import Item, ItemState, Kind, Queue, RetryPolicy
from .read.cache import ReadCache
from .read.offline import open_offline
from .read.reader import CachedReader, FileEntry, Mode, Reader, RepositoryInfo, RepositoryView, open_live
from .transfer.audit import AuditLog
from .transfer.bundle import (
    CheckedBundle,
    ExportedBundle,
    ImportResult,
    check_bundle,
    check_lock,
    export_bundle,
    import_bundle,
    inspect_bundle,
    read_lock_checked,
    verify_bundle,
    write_lock,
)
from .transfer.format import BundleInfo, PartSummary
from .transfer.lockfile import LockDiff, LockedCommit, LockFile
from .transfer.lockfile import compare as compare_lock
from .transfer.lockfile import dumps as dump_lock
from .transfer.lockfile import loads as load_lock
from .transfer.lockfile import read as read_lock
from .transfer.signing import Signature
from .zfs.allow import AllowList

__all__ = [
    "AllowList",
    "AuditLog",
    "BundleCorruptError",
    "BundleError",
    "BundleInfo",
    "BundleTruncatedError",
    "BundleVersionError",
    "CacheMissError",
    "CachedReader",
    "CheckedBundle",
    "Commit",
    "ConflictError",
    "CorruptStateError",
    "DatasetBusyError",
    "DatasetExistsError",
    "DatasetNotFoundError",
    "DsgStorageError",
    "ExportedBundle",
    "FileEntry",
    "ImportResult",
    "InvalidArgumentError",
    "InvalidNameError",
    "Item",
    "ItemState",
    "Kind",
    "LockDiff",
    "LockFile",
    "LockFileError",
    "LockedCommit",
    "MetricsUnavailableError",
    "Mode",
    "NoSpaceError",
    "NotABundleError",
    "NotAllowedError",
    "Owner",
    "PartSummary",
    "Pattern",
    "PendingTransaction",
    "Phase",
    "Policy",
    "PolicyError",
    "PoolForeignError",
    "PoolNotFoundError",
    "PoolOpenError",
    "PoolUnavailableError",
    "PruneResult",
    "Queue",
    "QueueFullError",
    "QueueItemNotFoundError",
    "ReadCache",
    "ReadOnlyError",
    "Reader",
    "Repository",
    "RepositoryBusyError",
    "RepositoryInfo",
    "RepositoryNotFoundError",
    "RepositoryStatus",
    "RepositoryView",
    "RetentionPolicy",
    "RetryPolicy",
    "Signature",
    "State",
    "Transaction",
    "TransactionError",
    "TransactionInProgressError",
    "TransactionNotFoundError",
    "TransactionStateError",
    "UnsafePathError",
    "ZfsError",
    "ZfsUnavailableError",
    "__version__",
    "begin",
    "check_bundle",
    "check_lock",
    "check_repository_props",
    "compare_lock",
    "dump_lock",
    "export_bundle",
    "import_bundle",
    "inspect_bundle",
    "load_lock",
    "mark_keep",
    "open_live",
    "open_offline",
    "plan_retention",
    "prune",
    "read_lock",
    "read_lock_checked",
    "verify_bundle",
    "write_lock",
]
