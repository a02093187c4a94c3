"""The two transaction patterns, each saying in one place how it begins, where its
commit point is, how it is undone and what it retires.

*init* (the dataset does not exist): begin creates ``REPO.dsg-init-TX``; the commit
point is its rename to ``REPO``; undoing it destroys it; nothing is retired.

*sync* (the dataset exists): begin marks the repository ``pending``, snapshots
``REPO@dsg-base-TX`` (one sync task) and clones it as ``REPO.dsg-ws-TX``; commit
promotes the workspace with its intent (the history moves to it), renames the repository
away to ``REPO.dsg-old-TX`` (after which nobody can change it unseen),
checks it is unchanged since the base, and renames the workspace to ``REPO``: the commit
point. Undoing it before the commit point renames the old head back; undoing the
transaction destroys the workspace and the base. The old head and the base are retired
(destroyed) once the commit is finished.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import attrs

from .. import names
from ..errors import (
    DatasetBusyError,
    DatasetExistsError,
    DatasetNotFoundError,
    DsgStorageError,
    InvalidArgumentError,
    TransactionInProgressError,
)
from ..names import (
    CARRIED_FLAGS,
    P_AUTO_SNAPSHOT,
    P_COMMIT_MESSAGE,
    P_MODE,
    P_OWNER,
    P_PENDING,
    P_RECOVERY_NOTE,
    P_STATE,
    P_TX,
)
from ..zfs.allow import AllowList
from ..zfs.port import Batch, Foreign, ZfsPort
from ..zfs.programs import on_off
from .actions import Action, Apply, ApplyOwner, Clone, Create, DestroySnapshots, Freeze, Mount, Rename, Thaw, Unmount
from .options import Owner, check_mountpoint, parse_mode
from .placement import place_recorded_head
from .records import Pattern, Phase, Record, left_bases
from .retire import destroy_base
from .view import PoolView, changes_since_base, since_base

DEFAULT_MODE = 0o755


@attrs.frozen
class Defaults:
    """What begin settled for a new transaction: where, owned by whom, with which mode."""

    mountpoint: str
    owner: Owner
    mode: int


class TransactionPattern:
    """What init and sync have in common; each subclass fills in its differences."""

    kind: ClassVar[Pattern]

    def temporary(self, repo: str, tx: str) -> str:
        """The dataset the caller fills during the transaction."""
        raise NotImplementedError

    def defaults(self, view: PoolView, mountpoint: str | None, owner: Owner | None, mode: int | None) -> Defaults:
        """Check begin's arguments against the pool and fill in what was left out."""
        raise NotImplementedError

    def begin(self, repo: str, record: Record, props: dict[str, str | int]) -> list[Action]:
        """Create the temporary dataset, recording ``props`` on it."""
        raise NotImplementedError

    def bases(self, repo: str, tx: str) -> tuple[str, ...]:
        """Where the transaction's base snapshot may be (none: init has none); what other
        tools snapshotted of the temporary after it is theirs (``ZfsPort.foreign``)."""
        return ()

    def detach(self, view: PoolView, record: Record, wait: float = 0.0) -> list[Action]:
        """Before the commit point: take the workspace off its path and stop every
        change to the repository (``wait``: how long a writer may take to finish)."""
        return [Unmount(record.dataset)]

    def since_base(self, zfs: ZfsPort, repo: str, record: Record) -> Foreign:
        """After ``detach``, one read for ``changes`` and ``strays``: what happened to the
        temporary (and, for sync, to the repository set aside) since the base."""
        return zfs.foreign(record.dataset, self.bases(repo, record.tx))

    def changes(self, zfs: ZfsPort, repo: str, record: Record, since: Foreign) -> list[str]:
        """After ``detach``: files of the repository changed since begin (a conflict)."""
        return []

    def strays(self, view: PoolView, record: Record, foreign: Foreign) -> list[Action]:
        """Just before the commit point: the snapshots other tools took of the temporary
        since its base (a recursive ``zfs snapshot -r PARENT@x``) would become the
        repository's and show uncommitted work under its name: destroyed, and said so
        on the repository (``status``). One that is held cannot be: the commit is refused
        (DatasetBusyError naming the hold; nothing changed, the transaction stays open).
        ``foreign``: ``since_base``'s read."""
        if foreign.held:
            held = ", ".join(f"@{name} (held by {', '.join(tags)})" for name, tags in foreign.held.items())
            raise DatasetBusyError(
                f"{record.dataset} has snapshots another tool took of the uncommitted work and holds: {held}; "
                f"committing would show them under the name of {view.repository}",
                dataset=record.dataset,
                hint="release the holds (zfs release TAG SNAPSHOT) and commit again; have the tool skip "
                "dsg-storage's temporaries (README: Living beside sanoid, syncoid and zrepl)",
            )
        if not foreign.snapshots:
            return []
        shown = ", ".join(f"@{name}" for name, _ in foreign.snapshots)
        note = (
            f"{view.now.isoformat(timespec='seconds')} {record.tx}: destroyed {shown}, taken of the uncommitted "
            "workspace by another tool during the transaction (a snapshot under the repository's name shows "
            "committed content only)"
        )
        strays = tuple(f"{record.dataset}@{name}" for name, _ in foreign.snapshots)
        return [DestroySnapshots(strays), Apply(Batch().set(record.dataset, {P_RECOVERY_NOTE: note}))]

    def first_of_commit(self, record: Record) -> Batch:
        """What goes into commit's first sync task beside the intent."""
        return Batch()

    def before_destroy(self, view: PoolView, record: Record) -> list[Action]:
        """Undoing the transaction, before its temporary dataset is destroyed."""
        return []

    def resume(self, view: PoolView, record: Record) -> tuple[str, list[Action]]:
        """Recovery of a commit its caller asked for (``committing``) but did not see
        through: the next actions towards the commit point, or why it cannot be reached
        (then ``actions`` is empty and the transaction is rolled back instead)."""
        raise NotImplementedError

    def reattach(self, view: PoolView, record: Record) -> list[Action]:
        """Undo ``detach``'s renames (the mounts are put back by recovery's placement)."""
        return []

    def head(self, view: PoolView) -> list[Action]:
        """While the transaction is open: what must be mounted at the repository's path."""
        return []

    def retired(self, repo: str, tx: str) -> list[str]:
        """What a finished commit destroys (optional destroys: deferred while busy)."""
        return []

    def undo(self, view: PoolView, record: Record) -> list[Action]:
        """Undoing the transaction, after its temporary dataset was destroyed."""
        return []

    def commit_point_failed(self, exc: DsgStorageError, repo: str, tx: str) -> DsgStorageError:
        """The error to raise when the rename at the commit point was refused."""
        return exc


class Init(TransactionPattern):
    kind = Pattern.INIT

    def temporary(self, repo: str, tx: str) -> str:
        return names.init_dataset(repo, tx)

    def defaults(self, view: PoolView, mountpoint: str | None, owner: Owner | None, mode: int | None) -> Defaults:
        repo = view.repository
        if mountpoint is None:
            raise InvalidArgumentError(
                f"repository {repo} does not exist yet: begin needs a mountpoint to create it", dataset=repo
            )
        parent = repo.rsplit("/", 1)[0]
        if parent not in view.family:
            raise DatasetNotFoundError(f"parent dataset {parent} of {repo} does not exist", dataset=parent)
        return Defaults(mountpoint, owner or Owner.current(), DEFAULT_MODE if mode is None else mode)

    def begin(self, repo: str, record: Record, props: dict[str, str | int]) -> list[Action]:
        return [Create(record.dataset, props)]

    def resume(self, view: PoolView, record: Record) -> tuple[str, list[Action]]:
        if view.head is not None:
            return "the repository was created by someone else meanwhile", []
        return "commit resumed", [Unmount(record.dataset), Rename(record.dataset, view.repository)]

    def commit_point_failed(self, exc: DsgStorageError, repo: str, tx: str) -> DsgStorageError:
        if isinstance(exc, DatasetExistsError):
            return DatasetExistsError(
                f"repository {repo} was created by someone else since init transaction {tx} began",
                dataset=repo,
                hint=f"nothing was changed; abort it with 'dsg-storage abort {repo} {tx}'",
            )
        return exc


class Sync(TransactionPattern):
    kind = Pattern.SYNC

    def temporary(self, repo: str, tx: str) -> str:
        return names.workspace_dataset(repo, tx)

    def defaults(self, view: PoolView, mountpoint: str | None, owner: Owner | None, mode: int | None) -> Defaults:
        head = view.head or {}
        if mountpoint is None:
            current = head.get("mountpoint")
            if not isinstance(current, str) or not current.startswith("/"):
                raise InvalidArgumentError(
                    f"repository {view.repository} has mountpoint {current!r}: give a mountpoint",
                    dataset=view.repository,
                )
            mountpoint = current
        owner = owner or (Owner.parse_ids(head[P_OWNER]) if P_OWNER in head else Owner.current())
        mode = mode if mode is not None else parse_mode(head.get(P_MODE, DEFAULT_MODE))
        return Defaults(mountpoint, owner, mode)

    def begin(self, repo: str, record: Record, props: dict[str, str | int]) -> list[Action]:
        base = names.base_snapshot(repo, record.tx)
        # The pending mark on the repository, then the base snapshot, in one sync task:
        # recovery finds an interrupted begin from the mark alone.
        mark = Batch().set(repo, {P_PENDING: record.tx}).snapshot(base, {P_TX: record.tx})
        return [Apply(mark), Clone(record.dataset, base, props)]

    def bases(self, repo: str, tx: str) -> tuple[str, ...]:
        return names.base_places(repo, tx)

    def detach(self, view: PoolView, record: Record, wait: float = 0.0) -> list[Action]:
        # Read-only and renamed away, the repository cannot be changed unseen any more;
        # it stays mounted, so readers in it never block the commit (a writer does).
        repo = view.repository
        freeze: list[Action] = [Freeze(repo, path, wait) for path in view.mounted_at(repo)]
        return [Unmount(record.dataset), *freeze, Rename(repo, names.old_dataset(repo, record.tx))]

    def since_base(self, zfs: ZfsPort, repo: str, record: Record) -> Foreign:
        return since_base(zfs, repo, record.tx)

    def changes(self, zfs: ZfsPort, repo: str, record: Record, since: Foreign) -> list[str]:
        return changes_since_base(zfs, repo, record.tx, since)

    def first_of_commit(self, record: Record) -> Batch:
        # The history moves to the workspace now, before the repository is renamed away:
        # ZFS checks every snapshot's new name when a dataset gets a longer name (O(history)
        # for REPO -> REPO.dsg-old-TX), not when it gets a shorter one (ws -> REPO). A
        # reader's held snapshot refuses it; then the commit's last batch promotes.
        return Batch().promote(record.dataset, required=False)

    def before_destroy(self, view: PoolView, record: Record) -> list[Action]:
        # A commit that promoted the workspace and then failed leaves the repository a
        # clone of it: the history goes back to the repository first.
        origin = (view.head or {}).get("origin", "")
        if origin.startswith(record.dataset + "@"):
            return [Apply(Batch().promote(view.repository))]
        return []

    def resume(self, view: PoolView, record: Record) -> tuple[str, list[Action]]:
        if view.head is not None:  # not detached yet
            return "commit resumed: repository set aside", self.detach(view, record)
        changes = view.conflicts.get(record.tx)
        if changes:
            shown = ", ".join(changes[:3]) + (f" and {len(changes) - 3} more" if len(changes) > 3 else "")
            return f"the repository was changed after begin ({shown})", []
        return "commit resumed", [Unmount(record.dataset), Rename(record.dataset, view.repository)]

    def reattach(self, view: PoolView, record: Record) -> list[Action]:
        old = names.old_dataset(view.repository, record.tx)
        if view.head is not None or not view.exists(old):
            return []
        thaw: list[Action] = [Thaw(view.repository, path) for path in view.mounted_at(old)]
        return [Rename(old, view.repository), *thaw]

    def head(self, view: PoolView) -> list[Action]:
        return place_recorded_head(view)

    def retired(self, repo: str, tx: str) -> list[str]:
        return [names.old_dataset(repo, tx), names.base_snapshot(repo, tx)]

    def undo(self, view: PoolView, record: Record) -> list[Action]:
        if view.head is None:
            return []
        batch = destroy_base(Batch(), view.repository, record.tx, left_bases(view.head))
        return [Apply(batch.set(view.repository, {P_PENDING: ""}))]


def new_record(
    view: PoolView,
    pattern: TransactionPattern,
    tx: str,
    *,
    mountpoint: str | None,
    owner: Owner | None,
    mode: int | None,
) -> Record:
    """A new transaction's record: ``pattern``'s defaults settled, its dataset, where the
    caller works (beside the repository's path, or where an inherited mountpoint puts it)."""
    settled = pattern.defaults(view, mountpoint, owner, mode)
    dataset = pattern.temporary(view.repository, tx)
    inherits = settled.mountpoint == view.inherited_mountpoint()
    if inherits:  # where the temporary dataset inherits its mount: beside the repository's
        path = f"{settled.mountpoint.rsplit('/', 1)[0]}/{dataset.rsplit('/', 1)[1]}"
    else:
        path = names.workspace_mount_path(settled.mountpoint, tx)
    return Record(
        tx=tx,
        pattern=pattern.kind,
        phase=Phase.OPEN,
        dataset=dataset,
        path=path,
        mountpoint=settled.mountpoint,
        owner=settled.owner,
        mode=settled.mode,
        inherits=inherits,
        message="",
        begun=view.now.isoformat(timespec="seconds"),
    )


def _opening(record: Record) -> list[Action]:
    """The end of begin: the workspace mounted at its path with its owner and mode (no
    sync task: the dataset was created in state ``open``)."""
    return [Mount(record.dataset, record.path), ApplyOwner(record.path, record.owner, record.mode, record.dataset)]


def begin_actions(
    pattern: TransactionPattern, record: Record, view: PoolView, caller: Mapping[str, str] | None = None
) -> tuple[list[Action], list[Action]]:
    """Begin's two phases: create the temporary dataset (the pattern's), then open it
    (``_opening``); between them the lock file notes the begin as unfinished. ``caller``:
    the caller's user properties (``options.check_user_properties``), created with it."""
    props = {**(caller or {}), **_creation_props(record, view.repository, view.head or {})}
    return pattern.begin(view.repository, record, props), _opening(record)


def commit_actions(view: PoolView, record: Record, message: str | None, wait: float = 0.0) -> list[Action]:
    """Commit up to its commit point: the intent, the pattern's detach, the rename. (The
    conflict check runs between the last two; ``finish_commit`` follows.)"""
    return [
        _intent(record, message),
        *pattern_of(record).detach(view, record, wait),
        Rename(record.dataset, view.repository),
    ]


def _intent(record: Record, message: str | None) -> Action:
    """Commit's first step: the caller's wish (and the message), recorded in the pool,
    and in the same sync task what the pattern does first (sync: the promote)."""
    wish = Batch().set(
        record.dataset, {P_STATE: Phase.COMMITTING.value, **({P_COMMIT_MESSAGE: message} if message else {})}
    )
    return Apply(wish + pattern_of(record).first_of_commit(record))


def _creation_props(record: Record, repository: str, head: Mapping[str, str]) -> dict[str, str | int]:
    """What a temporary dataset is created with: the record, the ``CARRIED_FLAGS`` the
    repository (``head``) has of its own (a clone would take its parent's: a bundle's
    setuid files would work in the workspace and, after commit, in the repository),
    atime off (reads must not
    count as changes in the conflict check at commit) and, unless it inherits one, the
    repository's own mountpoint, so that commit has no native property to set (libzfs_core
    cannot set one; ``zfs set`` costs a process and a walk of every snapshot).

    ``zoned=on`` keeps a dataset with that mountpoint from being mounted there before it
    is the repository: ``zfs mount -a`` and ``zpool import`` skip zoned datasets, while our
    own mount(2) puts the workspace at its path. Commit's last sync task clears it
    (``zfs.sync.inherit``: zoned is inheritable, unlike ``canmount``); see
    docs/archive/0012-explicit-mountpoints.md."""
    local: dict[str, str | int] = {} if record.inherits else {"mountpoint": record.mountpoint, "zoned": 1}
    # Snapshot tools that honour com.sun:auto-snapshot never snapshot a temporary: what
    # they take of uncommitted work would otherwise become the repository's at commit.
    # As numbers: lzc_clone takes a native index property by its value, not its name.
    carried = {flag: 1 if on_off(head[flag]) == "on" else 0 for flag in CARRIED_FLAGS if flag in head}
    return {**local, **carried, "atime": 0, P_AUTO_SNAPSHOT: "false", **record.props(repository)}


def new_transaction(
    view: PoolView,
    allow: AllowList,
    tx: str,
    *,
    wanted: tuple[str | None, Owner | str | tuple[int, int] | None, str | int | None],
) -> tuple[TransactionPattern, Record]:
    """A new transaction's pattern and record from begin's arguments (``wanted``:
    mountpoint, owner, mode), checked before any change: no other transaction open, the
    arguments well formed, and where root will mount and chown (an inherited mountpoint
    is the parent's, read from the pool) allowed by the one rule (``allow``)."""
    mountpoint, owner, mode = wanted
    checked = check_mountpoint(mountpoint) if mountpoint is not None else None
    owner_v = Owner.parse(owner) if owner is not None else None
    mode_v = parse_mode(mode) if mode is not None else None
    repo = view.repository
    for open_record in view.records():
        raise TransactionInProgressError(
            f"repository {repo} already has an open transaction {open_record.tx} "
            f"(begun {open_record.begun or 'at an unknown time'}, workspace {open_record.path})",
            dataset=repo,
            hint=f"commit it, or abort it with 'dsg-storage abort {repo} {open_record.tx}'",
        )
    pattern = pattern_for(view)
    record = new_record(view, pattern, tx, mountpoint=checked, owner=owner_v, mode=mode_v)
    allow.check_place(record.mountpoint)
    allow.check_place(record.path, what="workspace path")
    return pattern, record


PATTERNS: dict[Pattern, TransactionPattern] = {Pattern.INIT: Init(), Pattern.SYNC: Sync()}


def pattern_of(record: Record) -> TransactionPattern:
    return PATTERNS[record.pattern]


def pattern_for(view: PoolView) -> TransactionPattern:
    """The pattern a new transaction takes: init if the repository does not exist, else sync."""
    return PATTERNS[Pattern.INIT if view.head is None else Pattern.SYNC]
