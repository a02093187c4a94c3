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
from ._errors import (
    BundleCorruptError,
    BundleError,
    BundleTruncatedError,
    BundleVersionError,
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
    PoolUnavailableError,
    QueueItemNotFoundError,
    RepositoryBusyError,
    RepositoryNotFoundError,
    TransactionError,
    TransactionInProgressError,
    TransactionNotFoundError,
    TransactionStateError,
    ZfsError,
    ZfsUnavailableError,
)
from ._options import Owner
from ._queue import Item, ItemState, Kind, Queue, RetryPolicy
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
    "BundleTruncatedError",
    "BundleVersionError",
    "Commit",
    "ConflictError",
    "DatasetBusyError",
    "DatasetExistsError",
    "DatasetNotFoundError",
    "DsgStorageError",
    "InvalidArgumentError",
    "InvalidNameError",
    "Item",
    "ItemState",
    "Kind",
    "LockFileError",
    "NoSpaceError",
    "NotABundleError",
    "NotAllowedError",
    "Owner",
    "Pattern",
    "PendingTransaction",
    "Phase",
    "PoolUnavailableError",
    "Queue",
    "QueueItemNotFoundError",
    "Repository",
    "RepositoryBusyError",
    "RepositoryNotFoundError",
    "RepositoryStatus",
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
]
