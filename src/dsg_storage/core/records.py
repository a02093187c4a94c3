"""What the pool records about transactions and commits, parsed once, where it is read.

A transaction's user properties (``names.P_*``) live on its temporary dataset and move
with it: once the workspace has the repository's name, they are the repository's.
Property values are read from a pool someone else may have written, so parsing checks
them and raises ``CorruptStateError`` (saying which dataset and property) instead of
failing somewhere later.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence

import attrs

from .. import names
from ..errors import CorruptStateError, DsgStorageError
from ..names import (
    P_BEGUN,
    P_COMMIT_MESSAGE,
    P_COMMITTED,
    P_INHERITS,
    P_LEFT_BASES,
    P_MESSAGE,
    P_MODE,
    P_MOUNTPOINT,
    P_OWNER,
    P_PATH,
    P_PATTERN,
    P_STATE,
    P_TX,
)
from ..zfs.port import Snapshot
from .options import Owner, check_mountpoint, parse_mode


class Pattern(enum.StrEnum):
    INIT = "init"
    SYNC = "sync"


class State(enum.StrEnum):
    """Where a Transaction object stands in this process."""

    OPEN = "open"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled-back"


class Phase(enum.StrEnum):
    """A transaction's state as recorded in the pool (``dsg-storage:state``)."""

    BEGINNING = "beginning"
    OPEN = "open"
    COMMITTING = "committing"  # the caller asked to commit: recovery completes it
    ABORTING = "aborting"
    COMMITTED = "committed"


@attrs.frozen
class Record:
    """A transaction as its user properties record it; ``dataset`` is where they are now."""

    tx: str
    pattern: Pattern
    phase: Phase
    dataset: str
    path: str  # where the caller works (the workspace's mount path)
    mountpoint: str  # where the repository is mounted
    owner: Owner
    mode: int
    inherits: bool  # the repository's mountpoint is inherited from its parent
    message: str
    begun: str | None

    @classmethod
    def parse(cls, dataset: str, props: Mapping[str, str]) -> Record:
        """Read a transaction's record; CorruptStateError if a property is missing or wrong."""
        try:
            return cls(
                tx=names.validate_tx_id(_get(props, P_TX)),
                pattern=Pattern(_get(props, P_PATTERN)),
                phase=Phase(props.get(P_STATE) or Phase.OPEN),
                dataset=dataset,
                path=check_mountpoint(_get(props, P_PATH)),
                mountpoint=check_mountpoint(_get(props, P_MOUNTPOINT)),
                owner=Owner.parse_ids(_get(props, P_OWNER)),
                mode=parse_mode(_get(props, P_MODE)),
                inherits=props.get(P_INHERITS) == "yes",
                message=props.get(P_COMMIT_MESSAGE, ""),
                begun=props.get(P_BEGUN),
            )
        except (DsgStorageError, ValueError) as exc:
            raise CorruptStateError(
                f"{dataset}: the transaction recorded there cannot be read ({exc})",
                dataset=dataset,
                hint="it was not written by dsg-storage, or was changed by hand; inspect it with 'zfs get all'",
            ) from exc

    def props(self, repository: str) -> dict[str, str]:
        """The user properties that record this transaction (what ``parse`` reads back)."""
        return {
            names.P_STATE: self.phase.value,
            P_INHERITS: "yes" if self.inherits else "no",
            P_TX: self.tx,
            P_PATTERN: self.pattern.value,
            names.P_REPO: repository,
            P_PATH: self.path,
            P_MOUNTPOINT: self.mountpoint,
            P_OWNER: str(self.owner),
            P_MODE: f"{self.mode:04o}",
            P_BEGUN: self.begun or "",
        }


def _get(props: Mapping[str, str], key: str) -> str:
    value = props.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key} is missing")
    return value


@attrs.frozen
class Commit:
    """One commit of a repository, as recorded on its commit snapshot."""

    snapshot: str
    tx: str
    committed: str  # ISO 8601, UTC
    message: str | None
    guid: int
    createtxg: int

    @property
    def name(self) -> str:
        return self.snapshot.split("@", 1)[1]


def commits_of(snapshots: Sequence[Snapshot]) -> list[Commit]:
    """The commit snapshots among ``snapshots`` (in their order), as Commits."""
    return [
        Commit(
            snapshot=snap.name,
            tx=snap.user_props.get(P_TX, ""),
            committed=snap.user_props.get(P_COMMITTED, ""),
            message=snap.user_props.get(P_MESSAGE) or None,
            guid=snap.guid,
            createtxg=snap.createtxg,
        )
        for snap in snapshots
        if names.is_commit_snapshot(snap.short_name)
    ]


@attrs.frozen
class PendingTransaction:
    tx: str
    pattern: Pattern
    state: str
    dataset: str
    path: str
    begun: str | None
    age: float | None = None  # seconds since begin, when the begin time is known
    in_use: tuple[str, ...] = ()  # processes with their cwd or files in the workspace


@attrs.frozen
class RepositoryStatus:
    repository: str
    exists: bool
    mountpoint: str | None
    mounted_at: tuple[str, ...]
    owner: str | None
    mode: str | None
    last_commit: Commit | None
    pending: tuple[PendingTransaction, ...]
    leftovers: tuple[str, ...]  # retired datasets whose destruction is still due
    recovery_note: str | None = None  # why recovery last rolled back a commit, if it did
    #: leftover -> why another tool keeps it (its holds, its bookmarks); empty: nothing does
    kept: Mapping[str, str] = attrs.Factory(dict)
    #: a replica: its properties were received from another host (not acted on here)
    replica: bool = False


def left_bases(props: Mapping[str, str] | None) -> tuple[str, ...]:
    """The transactions whose base a repository notes as left (``P_LEFT_BASES``). Read
    from a pool someone else may have written: only well-formed transaction ids count
    (anything else would name no base of ours), at most a few hundred of them."""
    return tuple(tx for tx in (props or {}).get(P_LEFT_BASES, "").split()[:256] if names.is_tx_id(tx))
