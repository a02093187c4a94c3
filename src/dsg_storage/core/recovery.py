"""Recovery, as a planner: from what the pool shows to the steps that finish or undo
whatever a crash interrupted. Pure: no ZFS, no clock, no files; ``Repository.recover``
observes, plans, applies the first step it has not tried yet, and observes again until
nothing is left to do.

The states recovery handles, in the order it handles them (``plan_recovery``):

1. **Commit point passed, commit not finished.** The repository's dataset carries a
   transaction's properties (``tx``) in a state other than ``committed``: the rename that
   gave it the repository's name happened. Finish: place the repository, remove the
   workspace directory, then in one sync task record the commit snapshot's name, promote,
   take (or complete) the commit snapshot, mark ``committed`` and destroy what the
   pattern retires (old head, base).
2. **Interrupted full bundle import.** A ``REPO.dsg-recv-TX`` dataset: destroy it and its
   snapshots (its rename to ``REPO`` was the import's commit point).
3. **Interrupted incremental bundle import.** The repository carries the import mark
   ``TX BASE``: destroy the snapshots received after ``BASE``, roll back, clear the mark.
4. For each transaction whose temporary dataset exists (oldest first):
   a. **Interrupted begin or rollback** (``aborting``; a begin: the step lock's file
      still names its transaction, see ``core.lock``, or ``beginning``, as earlier
      versions recorded it): undo it: destroy the temporary dataset and its directory
      (sync: the base snapshot and pending mark too).
   b. **Commit asked for, not finished** (``committing``: commit records it in its first
      step, so the caller's wish survives the caller): take it to its commit point
      (init: rename the dataset to ``REPO``; sync: set the repository aside as
      ``REPO.dsg-old-TX``, then, if that old head is unchanged since begin, rename the
      workspace to ``REPO``); state 1 then finishes it. If it cannot be reached (sync:
      the repository changed since begin; init: someone else created ``REPO``), put the
      repository back, note why on it (``recovery-note``, shown by ``status``) and mark
      the transaction ``aborting``: 4a rolls it back. A killed commit never stays open.
   c. **Sync commit of 0.1 stopped between its two renames** (0.1 had no ``committing``
      state; the repository's name is free, its old head is ``REPO.dsg-old-TX``): if the
      old head is unchanged since begin, rename the workspace to ``REPO``; if it
      changed, rename the old head back (the transaction stays open).
   d. **Open transaction whose workspace is not mounted** (after a reboot or a failed
      commit): mount it at its path (sync: with the repository at its own).
5. Leftovers:
   a. **Orphaned base snapshot**: the repository is marked ``pending`` for a transaction
      whose workspace does not exist (a begin stopped before its clone, or a rollback
      after destroying the workspace): destroy the base, clear the mark.
   b. **Old head without repository or workspace** (the workspace was destroyed by hand):
      give the old head the repository's name back.
   c. **Retired old heads** (``REPO.dsg-old-TX`` beside the repository): release the
      snapshot mounts a dead reader left on them, detach them (readers still in them go
      on reading), finish the promote a held snapshot refused at commit, and destroy them
      with their bases; what is still in use is deferred to the queue.
6. **Repository not mounted where it records** (after an import or a reboot): place it.
   **Repository zoned** (a bundle import keeps what it receives from being mounted at
   boot with ``zoned=on`` until its commit point): clear it, so ZFS mounts it at boot.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import attrs

from .. import names
from ..names import (
    P_AUTO_SNAPSHOT,
    P_COMMIT_SNAPSHOT,
    P_COMMITTED,
    P_IMPORT,
    P_MESSAGE,
    P_PENDING,
    P_RECOVERY_NOTE,
    P_STATE,
    P_TX,
)
from ..zfs.port import Batch, Foreign
from .actions import (
    Action,
    Apply,
    ApplyOwner,
    Destroy,
    DestroySnapshots,
    Mount,
    RemoveDir,
    Rename,
    Rollback,
    Unmount,
)
from .patterns import pattern_of
from .placement import place_head, place_recorded_head, recorded_placement
from .records import Phase, Record, left_bases
from .retire import DestroyTemporary, destroy_base, retire_old_head, retiring
from .view import PoolView


def _as_tuple(actions: Iterable[Action]) -> tuple[Action, ...]:
    return tuple(actions)


@attrs.frozen
class RecoveryStep:
    """A unit of recovery: what it achieves, in a line, and the actions that achieve it."""

    summary: str
    actions: tuple[Action, ...] = attrs.field(converter=_as_tuple)

    def describe(self) -> list[str]:
        return [self.summary, *(f"  {action.describe()}" for action in self.actions)]


def finish_commit(view: PoolView, record: Record) -> list[Action]:
    """After the commit point (the repository's name holds the new content): mount it,
    take the commit snapshot, retire the old head. Every prefix of the final batch is
    finished by recovery: the snapshot's name first, the state last."""
    repo = view.repository
    retired = pattern_of(record).retired(repo, record.tx)
    actions = place_head(view, record.mountpoint, record.inherits, record.owner, record.mode, retired[:1])
    actions.append(RemoveDir(record.path))
    snapshot = commit_snapshot_of(view)
    props = {P_TX: record.tx, P_COMMITTED: view.now.isoformat(timespec="milliseconds")}
    if record.message:
        props[P_MESSAGE] = record.message
    # The promote hands the history over to the new head; a snapshot of the old head
    # that a reader has mounted refuses it, and then it (and the retiring) waits.
    batch = Batch().set(repo, {P_COMMIT_SNAPSHOT: snapshot}).promote(repo, required=False)
    batch = batch.set(snapshot, props) if view.commit_snapshot_exists else batch.snapshot(snapshot, props)
    if not record.inherits:  # mountable where it records from now on (see patterns._creation_props)
        batch = batch.inherit(repo, "zoned")
    # The user properties the repository's owner (or a tool) set on it come with it, and
    # snapshot tools see it as before (``com.sun:auto-snapshot`` as it had it, or unset);
    # where the new head has one of its own (given to begin), the new one stays.
    own = _owners_props(view.family.get(retired[0]) or {}, view.head or {}) if retired else {}
    batch = batch.set(repo, own) if own else batch
    if P_AUTO_SNAPSHOT not in own:
        batch = batch.inherit(repo, P_AUTO_SNAPSHOT)
    foreign = view.foreign.get(retired[0], Foreign()) if retired else Foreign()
    if foreign.snapshots:
        said = (view.head or {}).get(P_RECOVERY_NOTE, "")  # what this commit said before (``strays``)
        note = _renamed_base(view, record.tx, foreign)
        batch = batch.set(repo, {P_RECOVERY_NOTE: f"{said}; {note}" if f" {record.tx}: " in said else note})
    batch = batch.set(repo, {P_STATE: Phase.COMMITTED.value})
    if retired:  # the old head and the base, and what other tools' snapshots change (``retire``)
        left = {*left_bases(view.head), *left_bases(view.family.get(retired[0]))}  # the old head's notes too
        batch = retiring(batch, repo, record.tx, foreign, left=left)
    actions.append(Apply(batch))
    return actions


def _owners_props(props: Mapping[str, str], head: Mapping[str, str]) -> dict[str, str]:
    """The user properties (``module:property``) an old head had of its own, but ours and
    those the new ``head`` has (our temporaries' ``com.sun:auto-snapshot`` aside)."""
    return {
        key: value
        for key, value in props.items()
        if ":" in key and not key.startswith(names.PROP_PREFIX) and (key not in head or key == P_AUTO_SNAPSHOT)
    }


def _renamed_base(view: PoolView, tx: str, foreign: Foreign) -> str:
    """What a commit says on the repository when other tools snapshotted it during the
    transaction (``retire``): where their snapshots went."""
    newest, older = foreign.snapshots[-1][0], [name for name, _ in foreign.snapshots[:-1]]
    gone = f"; @{', @'.join(older)} showed the same and went with the old head" if older else ""
    return (
        f"{view.now.isoformat(timespec='seconds')} {tx}: @{newest}, taken of the repository by another tool "
        f"during the transaction, now names on {view.repository} what it held then (its base){gone}"
    )


def commit_snapshot_of(view: PoolView) -> str:
    """The commit snapshot a finishing commit takes: the one an interrupted try recorded,
    or a new one named after ``view.now``."""
    return (view.head or {}).get(P_COMMIT_SNAPSHOT) or names.commit_snapshot(view.repository, view.now)


def undo_transaction(view: PoolView, record: Record) -> list[Action]:
    """Undo a transaction that has not reached its commit point (idempotent)."""
    actions: list[Action] = []
    if record.phase is Phase.OPEN:
        actions.append(Apply(Batch().set(record.dataset, {P_STATE: Phase.ABORTING.value})))
    pattern, repo = pattern_of(record), view.repository
    if view.exists(record.dataset):
        # The directory goes while the dataset still records its path, so that an
        # interruption here leaves something for recovery to finish from.
        actions += [
            *pattern.before_destroy(view, record),
            Unmount(record.dataset),
            RemoveDir(record.path),
            DestroyTemporary(record.dataset, pattern.bases(repo, record.tx), names.gone_dataset(repo, record.tx)),
        ]
    else:
        actions.append(RemoveDir(record.path))
    return actions + pattern.undo(view, record)


def remount_workspace(view: PoolView, record: Record) -> list[Action]:
    """Put an open transaction's workspace (and, for sync, the repository) back in place."""
    return [
        *pattern_of(record).head(view),
        Mount(record.dataset, record.path),
        ApplyOwner(record.path, record.owner, record.mode, record.dataset),
    ]


def undo_import(view: PoolView, base: str) -> list[Action]:
    """Put the repository back as it was at snapshot ``base``: destroy the snapshots
    after it, roll back, clear the import mark. Safe to repeat. (The import's
    ``zoned=on`` goes with the placement, state 6.)"""
    repo = view.repository
    actions: list[Action] = []
    if base in view.snapshots:
        newer = view.snapshots[view.snapshots.index(base) + 1 :]
        if newer:
            actions.append(DestroySnapshots(tuple(f"{repo}@{short}" for short in newer)))
        actions.append(Rollback(repo))
    return [*actions, Apply(Batch().inherit(repo, P_IMPORT))]


def plan_recovery(view: PoolView) -> list[RecoveryStep]:
    """Every step recovery would take from ``view``, most urgent first (see the module's
    docstring for the states). Empty when nothing was interrupted."""
    repo, head = view.repository, view.head
    steps: list[RecoveryStep] = []
    if head is not None and head.get(P_TX) and head.get(P_STATE) != Phase.COMMITTED:  # 1
        record = Record.parse(repo, head)
        steps.append(RecoveryStep(f"{record.tx}: commit finished", finish_commit(view, record)))
    for tx, dataset in view.temporaries("recv").items():  # 2
        steps.append(
            RecoveryStep(f"{tx}: interrupted bundle import {dataset} destroyed", [Destroy(dataset, snapshots=True)])
        )
    mark = (head or {}).get(P_IMPORT)
    if mark:  # 3
        tx, _, base = mark.partition(" ")
        steps.append(RecoveryStep(f"{tx}: interrupted bundle import undone (back to {base})", undo_import(view, base)))
    olds = view.temporaries("old")
    for record in view.records():  # 4
        steps += _transaction_steps(view, record, olds)
    steps += _leftover_steps(view, olds)  # 5
    if head is not None and head.get(P_STATE) in (None, Phase.COMMITTED):  # 6
        placement = place_recorded_head(view)
        if placement:
            mountpoint = head.get(names.P_MOUNTPOINT) or head.get("mountpoint")
            steps.append(RecoveryStep(f"remounted {repo} at {mountpoint}", placement))
        if view.zoned(repo) and recorded_placement(view) is not None:
            steps.append(
                RecoveryStep(f"{repo} mountable at boot again (zoned cleared)", [Apply(Batch().inherit(repo, "zoned"))])
            )
    return steps


def _transaction_steps(view: PoolView, record: Record, olds: Mapping[str, str]) -> list[RecoveryStep]:
    repo = view.repository
    unfinished_begin = record.phase is Phase.BEGINNING or (
        record.phase is Phase.OPEN and record.tx == view.unfinished_begin
    )
    if unfinished_begin or record.phase is Phase.ABORTING:  # 4a
        what = "begin" if unfinished_begin else "rollback"
        return [RecoveryStep(f"{record.tx}: interrupted {what} undone", undo_transaction(view, record))]
    if record.phase is Phase.COMMITTING:  # 4b
        return [_resume_commit(view, record)]
    if view.head is None and record.tx in olds:  # 4c (as 0.1 left it: no committing state)
        if view.conflicts.get(record.tx):
            return [
                RecoveryStep(
                    f"{record.tx}: commit not finished (repository changed since begin); transaction left open",
                    pattern_of(record).reattach(view, record),
                )
            ]
        return [RecoveryStep(f"{record.tx}: commit resumed", [Unmount(record.dataset), Rename(record.dataset, repo)])]
    if record.path not in view.mounted_at(record.dataset):  # 4d
        return [
            RecoveryStep(f"{record.tx}: open workspace remounted at {record.path}", remount_workspace(view, record))
        ]
    return []


def _resume_commit(view: PoolView, record: Record) -> RecoveryStep:
    """A commit whose caller asked for it (the ``committing`` state) and died: take it to
    its commit point (state 1 then finishes it), or, if the conflict rule forbids it, put
    the repository back, record why on it, and roll the transaction back."""
    pattern = pattern_of(record)
    what, actions = pattern.resume(view, record)
    if actions:
        return RecoveryStep(f"{record.tx}: {what}", actions)
    reattach = pattern.reattach(view, record)
    note = f"{view.now.isoformat(timespec='seconds')} {record.tx}: commit rolled back by recovery: {what}"
    # A commit is refused only with the repository there (init: someone created it) or
    # coming back (sync: ``reattach`` renames the old head back), so the note has a home.
    mark = Batch().set(record.dataset, {P_STATE: Phase.ABORTING.value}).set(view.repository, {P_RECOVERY_NOTE: note})
    return RecoveryStep(f"{record.tx}: commit rolled back ({what})", [*reattach, Apply(mark)])


def _leftover_steps(view: PoolView, olds: Mapping[str, str]) -> list[RecoveryStep]:
    repo, head = view.repository, view.head
    steps = []
    pending = (head or {}).get(P_PENDING)
    if pending and not view.exists(names.workspace_dataset(repo, pending)):  # 5a
        batch = Batch().destroy(names.base_snapshot(repo, pending), required=False).set(repo, {P_PENDING: ""})
        steps.append(RecoveryStep(f"{pending}: orphaned base snapshot removed", [Apply(batch)]))
    if head is None:  # 5b
        for tx, old in olds.items():
            if not view.exists(names.workspace_dataset(repo, tx)):
                steps.append(RecoveryStep(f"{tx}: workspace gone, old head {old} restored", [Rename(old, repo)]))
                break
        return steps
    for tx, old in olds.items():  # 5c
        foreign = view.foreign.get(old, Foreign())
        retire = retire_old_head(repo, tx, view.orphaned_mounts, foreign, left_bases(head))
        steps.append(RecoveryStep(f"{tx}: retired {old} destroyed" + _kept(foreign), retire))
    for tx, gone in view.temporaries("gone").items():  # 5d
        foreign = view.foreign.get(gone, Foreign())
        retire = [
            Unmount(gone, lazy=True),
            Apply(retiring(Batch(), repo, tx, foreign, kind="gone", left=left_bases(head))),
        ]
        steps.append(RecoveryStep(f"{tx}: undone {gone} destroyed" + _kept(foreign), retire))
    for tx in left_bases(head):  # 5e
        if not any(parsed and parsed[2] == tx for parsed in map(names.parse_temporary, view.family)):
            retire = [Apply(destroy_base(Batch(), repo, tx, left_bases(head)))]
            steps.append(RecoveryStep(f"{tx}: base kept by a hold retried", retire))
    return steps


def _kept(foreign: Foreign) -> str:
    """What a retiring step says of what other tools keep."""
    return f" (what is not: {foreign.why_kept()})" if foreign.held or foreign.bookmarks else ""
