"""dsg-storage: transactional changes to ZFS-backed data repositories.

    from dsg_storage import Repository

    repo = Repository("tank/data/survey", allow="tank/data")
    with repo.begin(mountpoint="/srv/survey", owner="1000:1000", mode="0750") as tx:
        (Path(tx.path) / "results.csv").write_text(...)
    # committed: /srv/survey holds results.csv; an exception in the block rolls back

All ZFS work goes through libzfs_core (module ``libzfs_core``, OS package
``python3-pyzfs``); see ``dsg_storage.zfs`` for the few things done otherwise.

Importing the package is cheap: the names below load their modules when first used
(PEP 562 ``__getattr__``), so a command or a script pays only for what it touches.
"""

from ._version import __version__

# Not typing.TYPE_CHECKING: importing typing alone costs more than the rest of this
# module, and `dsg-storage --version` needs nothing else (type checkers know the name).
TYPE_CHECKING = False
if TYPE_CHECKING:  # what type checkers and IDEs see; at run time, __getattr__ below
    from typing import Any

    from .core.options import Owner
    from .core.pool import Recovered, recover_pool
    from .core.prune import PruneResult, mark_keep, prune
    from .core.records import Commit, Pattern, PendingTransaction, Phase, RepositoryStatus, State
    from .core.repository import Repository, begin
    from .core.retention import RetentionPolicy
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
        ReplicaError,
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
    from .policy import SudoPolicy, check_repository_props
    from .policy import SudoPolicy as Policy
    from .queue import Item, ItemState, Kind, Queue, RetryPolicy
    from .read.cache import ReadCache
    from .read.offline import open_offline
    from .read.reader import CachedReader, FileEntry, Mode, Reader, RepositoryInfo, RepositoryView, open_live
    from .transfer.audit import AuditLog
    from .transfer.check import CheckedBundle, check_bundle, inspect_bundle, verify_bundle
    from .transfer.export import ExportedBundle, export_bundle
    from .transfer.importing import ImportResult, import_bundle
    from .transfer.layout import BundleInfo, PartSummary
    from .transfer.lockfile import LockDiff, LockedCommit, LockFile
    from .transfer.lockfile import compare as compare_lock
    from .transfer.lockfile import dumps as dump_lock
    from .transfer.lockfile import loads as load_lock
    from .transfer.lockfile import read as read_lock
    from .transfer.locking import check_lock, read_lock_checked, write_lock
    from .transfer.signing import Signature
    from .zfs.allow import AllowList

#: Public name -> (module, attribute): imported on first access, then kept in globals().
_LAZY: dict[str, tuple[str, str]] = {
    "BundleCorruptError": (".errors", "BundleCorruptError"),
    "BundleError": (".errors", "BundleError"),
    "BundleTruncatedError": (".errors", "BundleTruncatedError"),
    "BundleVersionError": (".errors", "BundleVersionError"),
    "CacheMissError": (".errors", "CacheMissError"),
    "ConflictError": (".errors", "ConflictError"),
    "CorruptStateError": (".errors", "CorruptStateError"),
    "DatasetBusyError": (".errors", "DatasetBusyError"),
    "DatasetExistsError": (".errors", "DatasetExistsError"),
    "DatasetNotFoundError": (".errors", "DatasetNotFoundError"),
    "DsgStorageError": (".errors", "DsgStorageError"),
    "InvalidArgumentError": (".errors", "InvalidArgumentError"),
    "InvalidNameError": (".errors", "InvalidNameError"),
    "LockFileError": (".errors", "LockFileError"),
    "MetricsUnavailableError": (".errors", "MetricsUnavailableError"),
    "NoSpaceError": (".errors", "NoSpaceError"),
    "NotABundleError": (".errors", "NotABundleError"),
    "NotAllowedError": (".errors", "NotAllowedError"),
    "PolicyError": (".errors", "PolicyError"),
    "PoolForeignError": (".errors", "PoolForeignError"),
    "PoolNotFoundError": (".errors", "PoolNotFoundError"),
    "PoolOpenError": (".errors", "PoolOpenError"),
    "PoolUnavailableError": (".errors", "PoolUnavailableError"),
    "QueueFullError": (".errors", "QueueFullError"),
    "QueueItemNotFoundError": (".errors", "QueueItemNotFoundError"),
    "ReadOnlyError": (".errors", "ReadOnlyError"),
    "ReplicaError": (".errors", "ReplicaError"),
    "RepositoryBusyError": (".errors", "RepositoryBusyError"),
    "RepositoryNotFoundError": (".errors", "RepositoryNotFoundError"),
    "TransactionError": (".errors", "TransactionError"),
    "TransactionInProgressError": (".errors", "TransactionInProgressError"),
    "TransactionNotFoundError": (".errors", "TransactionNotFoundError"),
    "TransactionStateError": (".errors", "TransactionStateError"),
    "UnsafePathError": (".errors", "UnsafePathError"),
    "ZfsError": (".errors", "ZfsError"),
    "ZfsUnavailableError": (".errors", "ZfsUnavailableError"),
    "Owner": (".core.options", "Owner"),
    "Recovered": (".core.pool", "Recovered"),
    "recover_pool": (".core.pool", "recover_pool"),
    "PruneResult": (".core.prune", "PruneResult"),
    "mark_keep": (".core.prune", "mark_keep"),
    "prune": (".core.prune", "prune"),
    "Commit": (".core.records", "Commit"),
    "Pattern": (".core.records", "Pattern"),
    "PendingTransaction": (".core.records", "PendingTransaction"),
    "Phase": (".core.records", "Phase"),
    "RepositoryStatus": (".core.records", "RepositoryStatus"),
    "State": (".core.records", "State"),
    "Repository": (".core.repository", "Repository"),
    "begin": (".core.repository", "begin"),
    "RetentionPolicy": (".core.retention", "RetentionPolicy"),
    "plan_retention": (".core.retention", "plan"),
    "Transaction": (".core.transaction", "Transaction"),
    "Policy": (".policy", "SudoPolicy"),  # the name 0.x exported; SudoPolicy says which
    "SudoPolicy": (".policy", "SudoPolicy"),
    "check_repository_props": (".policy", "check_repository_props"),
    "Item": (".queue", "Item"),
    "ItemState": (".queue", "ItemState"),
    "Kind": (".queue", "Kind"),
    "Queue": (".queue", "Queue"),
    "RetryPolicy": (".queue", "RetryPolicy"),
    "ReadCache": (".read.cache", "ReadCache"),
    "open_offline": (".read.offline", "open_offline"),
    "CachedReader": (".read.reader", "CachedReader"),
    "FileEntry": (".read.reader", "FileEntry"),
    "Mode": (".read.reader", "Mode"),
    "Reader": (".read.reader", "Reader"),
    "RepositoryInfo": (".read.reader", "RepositoryInfo"),
    "RepositoryView": (".read.reader", "RepositoryView"),
    "open_live": (".read.reader", "open_live"),
    "AuditLog": (".transfer.audit", "AuditLog"),
    "ImportResult": (".transfer.importing", "ImportResult"),
    "import_bundle": (".transfer.importing", "import_bundle"),
    "CheckedBundle": (".transfer.check", "CheckedBundle"),
    "check_bundle": (".transfer.check", "check_bundle"),
    "inspect_bundle": (".transfer.check", "inspect_bundle"),
    "verify_bundle": (".transfer.check", "verify_bundle"),
    "ExportedBundle": (".transfer.export", "ExportedBundle"),
    "export_bundle": (".transfer.export", "export_bundle"),
    "BundleInfo": (".transfer.layout", "BundleInfo"),
    "PartSummary": (".transfer.layout", "PartSummary"),
    "LockDiff": (".transfer.lockfile", "LockDiff"),
    "LockedCommit": (".transfer.lockfile", "LockedCommit"),
    "LockFile": (".transfer.lockfile", "LockFile"),
    "compare_lock": (".transfer.lockfile", "compare"),
    "dump_lock": (".transfer.lockfile", "dumps"),
    "load_lock": (".transfer.lockfile", "loads"),
    "read_lock": (".transfer.lockfile", "read"),
    "check_lock": (".transfer.locking", "check_lock"),
    "read_lock_checked": (".transfer.locking", "read_lock_checked"),
    "write_lock": (".transfer.locking", "write_lock"),
    "Signature": (".transfer.signing", "Signature"),
    "AllowList": (".zfs.allow", "AllowList"),
}


def __getattr__(name: str) -> "Any":
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    import importlib

    value = getattr(importlib.import_module(module, __name__), attr)
    globals()[name] = value  # the next access is a plain lookup
    return value


def __dir__() -> "list[str]":
    return sorted({*globals(), *_LAZY})


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
    "Recovered",
    "ReplicaError",
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
    "SudoPolicy",
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
    "recover_pool",
    "verify_bundle",
    "write_lock",
]
