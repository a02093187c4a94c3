"""dsg-storage: transactional changes to ZFS-backed data repositories.

    from dsg_storage import Repository

    repo = Repository("tank/data/survey", allow="tank/data")
    with repo.begin(mountpoint="/srv/survey", owner="1000:1000", mode="0750") as tx:
        (Path(tx.path) / "results.csv").write_text(...)
    # committed: /srv/survey holds results.csv; an exception in the block rolls back

All ZFS work goes through libzfs_core (module ``libzfs_core``, OS package
``python3-pyzfs``); see ``dsg_storage._zfs`` for the few things done otherwise.
"""

from ._allow import AllowList
from ._bundle import ImportResult, check_lock, export_bundle, import_bundle, inspect_bundle, verify_bundle, write_lock
from ._bundle_format import BundleInfo, PartSummary
from ._errors import (
    BundleCorruptError,
    BundleError,
    BundleTruncatedError,
    BundleVersionError,
    CacheMissError,
    ConflictError,
    DatasetBusyError,
    DatasetExistsError,
    DatasetNotFoundError,
    DsgStorageError,
    InvalidArgumentError,
    InvalidNameError,
    LockFileError,
    NoSpaceError,
    NotABundleError,
    NotAllowedError,
    PoolForeignError,
    PoolNotFoundError,
    PoolOpenError,
    PoolUnavailableError,
    QueueItemNotFoundError,
    ReadOnlyError,
    RepositoryBusyError,
    RepositoryNotFoundError,
    TransactionError,
    TransactionInProgressError,
    TransactionNotFoundError,
    TransactionStateError,
    ZfsError,
    ZfsUnavailableError,
)
from ._lockfile import LockDiff, LockedCommit, LockFile
from ._offline import open_offline
from ._options import Owner
from ._queue import Item, ItemState, Kind, Queue, RetryPolicy
from ._readcache import ReadCache
from ._reader import CachedReader, FileEntry, Mode, Reader, RepositoryInfo, RepositoryView, open_live
from ._transaction import (
    Commit,
    Pattern,
    PendingTransaction,
    Phase,
    Repository,
    RepositoryStatus,
    State,
    Transaction,
    begin,
)

__version__ = "0.1.0"

__all__ = [
    "AllowList",
    "BundleCorruptError",
    "BundleError",
    "BundleInfo",
    "BundleTruncatedError",
    "BundleVersionError",
    "CacheMissError",
    "CachedReader",
    "Commit",
    "ConflictError",
    "DatasetBusyError",
    "DatasetExistsError",
    "DatasetNotFoundError",
    "DsgStorageError",
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
    "Mode",
    "NoSpaceError",
    "NotABundleError",
    "NotAllowedError",
    "Owner",
    "PartSummary",
    "Pattern",
    "PendingTransaction",
    "Phase",
    "PoolForeignError",
    "PoolNotFoundError",
    "PoolOpenError",
    "PoolUnavailableError",
    "Queue",
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
    "RetryPolicy",
    "State",
    "Transaction",
    "TransactionError",
    "TransactionInProgressError",
    "TransactionNotFoundError",
    "TransactionStateError",
    "ZfsError",
    "ZfsUnavailableError",
    "__version__",
    "begin",
    "check_lock",
    "export_bundle",
    "import_bundle",
    "inspect_bundle",
    "open_live",
    "open_offline",
    "verify_bundle",
    "write_lock",
]
