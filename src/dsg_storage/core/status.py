"""What a repository shows now: its view, history, pending transactions and status.

Reading only: no lock is taken and nothing changes, so a crash here leaves nothing to
recover. ``Repository`` answers its reads through these functions; the ``status``
command calls them directly, without importing the transaction machinery (patterns,
actions, recovery), because at the command line importing is most of what a read costs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Protocol

import attrs

from .. import names
from ..errors import DatasetNotFoundError, RepositoryNotFoundError, ZfsError
from ..names import P_IMPORT, P_MODE, P_OWNER, P_RECOVERY_NOTE
from ..zfs.port import HostPort, Snapshot, ZfsPort
from .history import lineage
from .records import Commit, PendingTransaction, RepositoryStatus, commits_of, left_bases
from .view import PoolView, observe


class PoolPropertyPolicy(Protocol):
    """What a repository asks of a policy (``dsg_storage.SudoPolicy``) before acting on the
    properties that steer root (mount paths, owner, mode) as read from the pool."""

    def check_repository_props(self, dataset: str, props: Mapping[str, str]) -> None: ...


def view(
    zfs: ZfsPort,
    name: str,
    policy: PoolPropertyPolicy | None = None,
    *,
    unfinished_begin: str | None = None,
    committed: str | None = None,
) -> PoolView:
    """What the pool shows about repository ``name`` now, checked against ``policy``
    when there is one (``unfinished_begin``: see ``core.lock``; ``committed``: see
    ``core.view.observe``)."""
    seen = observe(zfs, name, unfinished_begin=unfinished_begin, committed=committed)
    if policy is not None:
        for dataset, props in seen.family.items():
            if dataset == name or dataset.startswith(name + ".dsg-"):
                policy.check_repository_props(dataset, props)
    return seen


def history(zfs: ZfsPort, name: str) -> list[Commit]:
    """Commits, oldest first. Raises RepositoryNotFoundError if the dataset is missing."""
    return commits_named(name, snapshots(zfs, name))


def snapshots(zfs: ZfsPort, name: str, *, guarded: bool = False) -> list[Snapshot]:
    """The snapshots ``history`` reads (``lineage``: an old head's first), for a caller
    that needs more of them than the commits; ``guarded``: the repository's own with their
    holds and clones, in the same read. RepositoryNotFoundError if it is missing."""
    try:
        # no exists() first: listing by commands, that would load libzfs_core
        return lineage(zfs, name, guarded=guarded)
    except ZfsError as exc:
        if isinstance(exc, DatasetNotFoundError) or not zfs.exists(name):
            raise RepositoryNotFoundError(f"repository {name} does not exist", dataset=name) from exc
        raise


def commits_named(name: str, seen: Sequence[Snapshot]) -> list[Commit]:
    """The commits among ``seen`` named as repository ``name``'s, also those an old head
    still keeps (see ``lineage``)."""
    return [attrs.evolve(c, snapshot=f"{name}@{c.name}") for c in commits_of(seen)]


def _commits(zfs: ZfsPort, name: str, head: Mapping[str, str] | None = None) -> list[Commit]:
    return commits_named(name, lineage(zfs, name, head=head))


def pending(seen: PoolView, host: HostPort) -> list[PendingTransaction]:
    """Transactions not finished yet (open, or interrupted and awaiting recovery)."""
    return [
        PendingTransaction(
            r.tx,
            r.pattern,
            r.phase.value,
            r.dataset,
            r.path,
            r.begun,
            age=age(r.begun, seen.now),
            in_use=tuple(host.holders(r.path)),
        )
        for r in seen.records()
    ]


def status(zfs: ZfsPort, name: str, policy: PoolPropertyPolicy | None = None) -> RepositoryStatus:
    """Mountpoint, owner, mode, last commit, pending transactions and leftovers of ``name``."""
    seen = view(zfs, name, policy)
    head = seen.head
    commits = _commits(zfs, name, head) if head is not None else []  # the view has seen it exists
    return RepositoryStatus(
        repository=name,
        exists=head is not None,
        mountpoint=(head or {}).get("mountpoint"),
        mounted_at=seen.mounted_at(name),
        owner=(head or {}).get(P_OWNER),
        mode=(head or {}).get(P_MODE),
        last_commit=commits[-1] if commits else None,
        pending=tuple(pending(seen, zfs.host)),
        leftovers=(
            *seen.temporaries("old").values(),
            *seen.temporaries("gone").values(),
            *(names.base_snapshot(name, tx) for tx in left_bases(head)),
        ),
        recovery_note=(head or {}).get(P_RECOVERY_NOTE) or None,
        kept={
            **{name: found.why_kept() for name, found in seen.foreign.items() if found.held or found.bookmarks},
            **{
                names.base_snapshot(name, tx): "not destroyed yet: held, or the origin of one kept above"
                for tx in left_bases(head)
            },
        },
        replica=seen.replica,
    )


def age(begun: str | None, now: datetime) -> float | None:
    """Seconds since ``begun`` (ISO 8601), None if unknown."""
    try:
        return (now - datetime.fromisoformat(begun)).total_seconds() if begun else None
    except ValueError:
        return None  # written by hand: unknown


#: What each temporary kind says is in flight (an old head or a kept one is not: it waits
#: for its destruction, and the repository's content is final).
_IN_FLIGHT = {"init": "a transaction (init)", "ws": "a transaction", "recv": "a bundle import"}


def in_flight(zfs: ZfsPort, dataset: str) -> list[tuple[str, str, str]]:
    """(repository, tx, what) for each transaction or bundle import in flight on
    ``dataset`` or any repository below it: while one is, a snapshot another tool takes
    there would not show the repository's committed state for long (``snapshot-ok``, the
    hook for sanoid and zrepl). Two reads: the dataset's family (its temporaries are its
    siblings) and the filesystems below it."""
    found: dict[tuple[str, str], str] = {}
    for name, props in {**zfs.family(dataset), **zfs.filesystems(dataset)}.items():
        parsed = names.parse_temporary(name)
        if parsed and parsed[1] in _IN_FLIGHT and (parsed[0] == dataset or parsed[0].startswith(dataset + "/")):
            found[(parsed[0], parsed[2])] = _IN_FLIGHT[parsed[1]]
        elif (name == dataset or name.startswith(dataset + "/")) and props.get(P_IMPORT):
            tx = props[P_IMPORT].partition(" ")[0]
            found[(name, tx)] = "a bundle import"
    return sorted((repo, tx, what) for (repo, tx), what in found.items())
