"""What the pool shows about one repository, read in one go: the input of every plan.

``observe`` reads the repository's *family* (the dataset and its ``REPO.dsg-*``
siblings with our properties, one channel program) and the mounts, plus the few facts
that only some states need (asked for only in those states): whether a sync commit
stopped between its two renames would lose a change, the snapshots an interrupted
bundle import must roll back, whether a finishing commit's snapshot already exists.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import attrs

from .. import names
from ..errors import DatasetNotFoundError
from ..names import P_COMMIT_SNAPSHOT, P_IMPORT, P_STATE, P_TX
from ..zfs.port import Foreign, ZfsPort
from ..zfs.programs import on_off
from ..zfs.reads import FamilyRead, ForeignRead, MountFlagsRead
from .records import Phase, Record


@attrs.frozen
class PoolView:
    repository: str
    family: Mapping[str, Mapping[str, str]]
    mounts: Mapping[str, tuple[str, ...]]
    now: datetime
    #: tx -> files changed since its begin, for each sync commit stopped between its renames
    conflicts: Mapping[str, tuple[str, ...]] = attrs.Factory(dict)
    #: the repository's snapshots (short names, oldest first) while a bundle import is marked
    snapshots: tuple[str, ...] = ()
    commit_snapshot_exists: bool = False
    #: (source, path): snapshot mounts of this repository's datasets left by dead readers
    orphaned_mounts: tuple[tuple[str, str], ...] = ()
    #: the transaction whose begin died before its last step (the lock file's note)
    unfinished_begin: str | None = None
    #: retired temporaries (old heads, undone ones kept) -> what other tools made of them
    foreign: Mapping[str, Foreign] = attrs.Factory(dict)
    #: dataset -> the mount(2) flags its properties asked for, read with the family (only
    #: where a mount follows at the same moment: ``observe``'s ``committed``)
    mount_flags: Mapping[str, int] = attrs.Factory(dict)

    @property
    def head(self) -> Mapping[str, str] | None:
        """The repository's own dataset, if it exists."""
        return self.family.get(self.repository)

    def exists(self, dataset: str) -> bool:
        return dataset in self.family

    @property
    def replica(self) -> bool:
        """The repository's ``dsg-storage:*`` properties were all received (``zfs receive``
        of another host's dataset), none set here: a replica, not ours to act on."""
        return (self.head or {}).get("@received") == "yes"

    def zoned(self, dataset: str) -> bool:
        """Whether ``dataset`` has ``zoned=on`` of its own (so ZFS does not mount it at
        boot): a temporary dataset with the repository's mountpoint, or a bundle import
        not finished (docs/archive/0012)."""
        return on_off((self.family.get(dataset) or {}).get("zoned")) == "on"

    def mounted_at(self, dataset: str) -> tuple[str, ...]:
        return self.mounts.get(dataset, ())

    def temporaries(self, kind: str) -> dict[str, str]:
        """tx -> dataset, for our temporary datasets of ``kind`` (init, ws, old, recv)."""
        found = {}
        for dataset in self.family:
            parsed = names.parse_temporary(dataset)
            if parsed and parsed[0] == self.repository and parsed[1] == kind:
                found[parsed[2]] = dataset
        return dict(sorted(found.items()))

    def records(self) -> list[Record]:
        """Transactions whose temporary dataset (init or workspace) exists, oldest first."""
        found = [
            Record.parse(dataset, self.family[dataset])
            for kind in ("init", "ws")
            for dataset in self.temporaries(kind).values()
            if P_TX in self.family[dataset]
        ]
        return sorted(found, key=lambda r: r.tx)

    def inherited_mountpoint(self) -> str | None:
        """The mountpoint the repository gets by inheritance from its parent, if any.

        When the user's mountpoint is that one, the temporary datasets carry no local
        mountpoint and simply inherit theirs (beside it), and the rename at commit moves
        the repository's mount into place with no property to set: no ``zfs`` command.
        """
        parent, leaf = self.repository.rsplit("/", 1)
        base = (self.family.get(parent) or {}).get("mountpoint")
        if not isinstance(base, str) or not base.startswith("/"):
            return None  # none or legacy
        return f"{base.rstrip('/')}/{leaf}"


def members_by_repository(listing: Mapping[str, object]) -> dict[str, list[str]]:
    """``listing``'s names by the repository whose family they would be members of (the
    name itself, and each ``REPO`` it begins ``REPO.dsg-`` with): made once, so that
    cutting the families of all its repositories (``family_in``) costs the listing's
    size, not its square."""
    found: dict[str, list[str]] = {}
    mark = ".dsg-"
    for name in listing:
        found.setdefault(name, []).append(name)
        leaf_at = name.rfind("/") + 1
        at = name.find(mark, leaf_at)
        while at > leaf_at:
            found.setdefault(name[:at], []).append(name)
            at = name.find(mark, at + 1)
    return found


def family_in(
    listing: Mapping[str, Mapping[str, str]], repository: str, members: Mapping[str, Sequence[str]] | None = None
) -> dict[str, dict[str, str]] | None:
    """``repository``'s family (``ZfsPort.family``) cut from ``listing`` (``ZfsPort.families``
    of a dataset above it): the same members, described the same way. None when the
    listing does not hold its parent. ``members``: ``members_by_repository(listing)``, made once for many."""
    parent = repository.rsplit("/", 1)[0]
    if parent not in listing:
        return None
    index = members if members is not None else members_by_repository(listing)
    found = {name: dict(listing[name]) for name in index.get(repository, ())}
    found[parent] = {"mountpoint": listing[parent].get("mountpoint", "none")}
    return found


def quiet_view(
    family: Mapping[str, Mapping[str, str]],
    repository: str,
    mounts: Mapping[str, tuple[str, ...]],
    orphaned: Sequence[tuple[str, str]],
) -> PoolView | None:
    """``observe``'s view of a quiet repository from reads already made (its family, the
    mount table as ``mount_table`` gives it, the orphaned reader mounts; the views of many
    repositories share them): one that exists with no temporary dataset
    and no import mark, for which ``observe`` would read nothing else. None otherwise:
    such a repository needs ``observe``."""
    head = family.get(repository)
    if head is None or head.get(P_IMPORT) or any(names.parse_temporary(d) for d in family):
        return None
    if head.get(P_TX) and head.get(P_STATE) != Phase.COMMITTED:
        return None  # a commit to finish: observe asks whether its snapshot exists
    return _seen(repository, family, mounts, orphaned)


def mount_table(mounts: Mapping[str, Sequence[str]]) -> dict[str, tuple[str, ...]]:
    """``HostPort.mounts``'s answer as a view holds it (read-only)."""
    return {dataset: tuple(paths) for dataset, paths in mounts.items()}


def _seen(
    repository: str,
    family: Mapping[str, Mapping[str, str]],
    mounts: Mapping[str, tuple[str, ...]],
    orphaned: Sequence[tuple[str, str]],
    **facts: Any,
) -> PoolView:
    """The view of ``repository`` from its family and the host's mounts (the reader mounts
    left by dead readers, of its family's datasets), with the ``facts`` some states need."""
    return PoolView(
        repository,
        family,
        mounts,
        datetime.now(UTC),
        orphaned_mounts=tuple((source, path) for source, path in orphaned if source.split("@")[0] in family),
        **facts,
    )


def changes_since(zfs: ZfsPort, filesystem: str, snapshot: str, *, ignore_root: bool = False) -> list[str]:
    """Files of ``filesystem`` changed since ``snapshot`` (its full name: of the filesystem
    itself, or of the dataset it is a clone of): "has the repository changed since S",
    the one answer commit's conflict check and an incremental import's check share.

    Asked after a step that synced every earlier write (commit: the rename; an import:
    the unmount), so ``written@`` sees them all, and zero (the usual case) settles it at
    once. Mounting a filesystem also writes a little metadata (after an import, or a
    remount by recovery), so a non-zero value is confirmed file by file with ``zfs
    diff`` before it counts. ``ignore_root``: the root directory's own change does not
    count (an import gives the root the importer's owner and mode anyway; any entry
    added or removed under it shows as a line of its own)."""
    key = f"written@{snapshot}"
    if not int((zfs.get_props(filesystem, [key]) or {}).get(key, 0)):
        return []
    lines = zfs.changed_files(snapshot, filesystem)
    return [line for line in lines if not (ignore_root and line.split("\t")[-1] in ("/", ""))]


def since_base(zfs: ZfsPort, repository: str, tx: str) -> Foreign:
    """What happened since sync transaction ``tx``'s base, in one read after commit's
    rename: other tools' snapshots of the workspace, where the base is (on the old head,
    or on the workspace once commit promoted it) and what the old head
    (``REPO.dsg-old-TX``) has written since it (``changes_since_base``)."""
    workspace, old = names.workspace_dataset(repository, tx), names.old_dataset(repository, tx)
    return zfs.foreign(workspace, names.base_places(repository, tx), written_of=old)


def changes_since_base(zfs: ZfsPort, repository: str, tx: str, since: Foreign) -> list[str]:
    """Files of the old head changed since the transaction's base (``changes_since``),
    from ``since_base``'s read; zero bytes written (the usual case) settles it at once."""
    old = names.old_dataset(repository, tx)
    if since.base is None or since.written is None:
        raise DatasetNotFoundError(
            f"the base snapshot of transaction {tx} is gone from {repository}'s datasets: changes since it "
            "cannot be checked",
            dataset=old,
            hint="nothing was changed; roll the transaction back",
        )
    if not since.written:
        return []
    return zfs.changed_files(since.base, old)


def observe(
    zfs: ZfsPort,
    repository: str,
    *,
    conflicts: bool = True,
    unfinished_begin: str | None = None,
    committed: str | None = None,
) -> PoolView:
    """Read what the pool shows about ``repository`` now (see the module's docstring);
    ``conflicts=False`` skips the conflict check of commits stopped between renames;
    ``unfinished_begin`` is what the step lock's file notes (``core.lock``).
    ``committed``: the transaction whose commit point just passed; what finishing it
    needs (the old head's foreign snapshots, the repository's mount flags) is read with
    the family, in one program."""
    family, known, flags = _family_read(zfs, repository, committed)
    mounts = mount_table(zfs.host.mounts())
    head = family.get(repository)
    found: dict[str, tuple[str, ...]] = {}
    snapshots: tuple[str, ...] = ()
    commit_snapshot_exists = False
    if head is None and conflicts:  # a sync commit may have stopped between its renames
        for dataset in family:
            parsed = names.parse_temporary(dataset)
            if parsed and parsed[1] == "old" and names.workspace_dataset(repository, parsed[2]) in family:
                since = since_base(zfs, repository, parsed[2])
                found[parsed[2]] = tuple(changes_since_base(zfs, repository, parsed[2], since))
    elif head is not None:
        if head.get(P_IMPORT):
            snapshots = tuple(s.short_name for s in zfs.snapshots(repository))
        snapshot = head.get(P_COMMIT_SNAPSHOT)
        if snapshot and head.get(P_STATE) != Phase.COMMITTED:
            commit_snapshot_exists = zfs.exists(snapshot)
    foreign = {}
    for dataset in family:  # retired temporaries: what other tools made of them (``core.retire``)
        parsed = names.parse_temporary(dataset)
        if parsed and parsed[0] == repository and parsed[1] in ("old", "gone"):
            if dataset in known:
                foreign[dataset] = known[dataset]
            else:
                foreign[dataset] = zfs.foreign(dataset, names.base_places(repository, parsed[2]))
    return _seen(
        repository,
        family,
        mounts,
        zfs.host.orphaned_reader_mounts(),
        conflicts=found,
        snapshots=snapshots,
        commit_snapshot_exists=commit_snapshot_exists,
        unfinished_begin=unfinished_begin,
        foreign=foreign,
        mount_flags=flags,
    )


def _family_read(
    zfs: ZfsPort, repository: str, committed: str | None
) -> tuple[dict[str, dict[str, str]], dict[str, Foreign], dict[str, int]]:
    """``repository``'s family; after ``committed``'s commit point, with its old head's
    foreign snapshots and the repository's mount flags, read together."""
    if committed is None:
        return zfs.family(repository), {}, {}
    old = names.old_dataset(repository, committed)
    reads = (
        FamilyRead(repository),
        ForeignRead(old, names.base_places(repository, committed)),
        MountFlagsRead(repository),
    )
    family, foreign, flags = zfs.together(*reads)
    return family, {old: foreign}, {repository: flags}
