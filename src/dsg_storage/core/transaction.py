"""A transaction on a repository, as the caller holds it (``Repository.begin`` returns
one): its id, pattern and workspace path, and commit/rollback, also as a context manager.
What it does in the pool is ``Repository``'s; this object only remembers which one it is."""

from __future__ import annotations

from types import TracebackType
from typing import Protocol, Self

from ..errors import TransactionStateError
from .records import Commit, Record, State


class Committer(Protocol):
    """What a transaction asks of its repository (``Repository``)."""

    name: str

    def commit(self, tx: str, message: str | None = None, *, wait: float = 0.0) -> Commit: ...
    def rollback(self, tx: str) -> None: ...


class Transaction:
    """An open transaction; use it as a context manager to commit or roll back.

    ``path`` is where the caller changes files; ``pattern`` is init or sync; ``id`` is
    the transaction id, with which any process can commit or roll it back.
    """

    def __init__(self, repository: Committer, record: Record) -> None:
        self.repository = repository
        self._record = record
        self.id = record.tx
        self.pattern = record.pattern
        self.dataset = record.dataset
        self.path = record.path
        self.mountpoint = record.mountpoint
        self.owner = record.owner
        self.mode = record.mode
        self.inherits_mountpoint = record.inherits
        self.state = State.OPEN

    def __repr__(self) -> str:
        return f"Transaction({self.repository.name!r}, {self.id!r}, {self.pattern.value}, {self.state.value})"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.state is not State.OPEN:
            return
        if exc_type is None:
            self.commit()
        else:
            self.rollback()

    def _require_open(self) -> None:
        if self.state is not State.OPEN:
            raise TransactionStateError(f"transaction {self.id} is already {self.state.value}", dataset=self.dataset)

    def commit(self, message: str | None = None, *, wait: float = 0.0) -> Commit:
        """Make the workspace the repository and record a commit snapshot.

        Afterwards the repository's dataset holds the workspace's files, is mounted at its
        mountpoint (the ``mountpoint`` property, so it stays right after a reboot) and is
        owned as recorded; the temporary datasets and snapshots are gone, or queued for
        when the readers still using the old content let go. Readers (a shell in the
        repository, a file open for reading, a browsed ``.zfs/snapshot``) never block it:
        they keep what they had. A process with a file open for writing does (it would
        lose what it writes): DatasetBusyError naming it, after waiting at most ``wait``
        seconds for it to close. Raises ConflictError, changing nothing, if the
        repository was written after begin.

        After a crash: the first step records that the commit was asked for, so the next
        call on the repository, or ``recover``, completes it (or, if the repository was
        changed since begin, rolls it back and says why in ``status``); a killed commit
        never leaves its transaction open.
        """
        self._require_open()
        commit = self.repository.commit(self.id, message, wait=wait)
        self.state = State.COMMITTED
        return commit

    def rollback(self) -> None:
        """Throw the workspace away; the repository is left exactly as it was.

        After a crash midway, the next call on the repository (or ``recover``) finishes
        the rollback.
        """
        self._require_open()
        self.repository.rollback(self.id)
        self.state = State.ROLLED_BACK
