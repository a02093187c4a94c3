"""The two receive patterns: a checked stream source (a bundle) landing in a repository,
planned as actions like ``Init`` and ``Sync`` are, run by ``Repository.receive``.

*full* (the repository does not exist): ``Init`` with "receive the checked parts" in
place of create. The parts are received into ``REPO.dsg-recv-TX`` (zoned while it has
the repository's own mountpoint, so ZFS never mounts it at boot), its safe properties
and mountpoint set, the repository's record and the snapshots' properties written in
one sync task, then it is renamed to ``REPO``: **the commit point**. Undone by
recovery's state 2 (destroy ``REPO.dsg-recv-TX``); finished by its placement (state 6).

*incremental* (the repository's latest snapshot is the source's base): unmount the
repository (nothing can be written after the check), check it unchanged since the
base, mark it (``dsg-storage:import TX BASE`` with ``zoned=on``, one ``zfs set``), roll
it back to the base, receive the parts, then in one sync task set the snapshots'
properties, the new owner and mode, and clear the mark: **the commit point**. Undone
by recovery's state 3 (destroy what arrived after the base, roll back, clear the mark);
finished by its placement.

The plan (``ReceivePlan``) is what runs and what a dry run prints. What the source must
be, and who checked it, is ``StreamSource``'s contract: the core receives only parts
whose claims were checked, and checks what ZFS made of each (the snapshot's GUID).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Protocol

import attrs

from .. import names
from ..errors import (
    BundleError,
    ConflictError,
    DatasetBusyError,
    DatasetExistsError,
    DsgStorageError,
    InvalidArgumentError,
    NoSpaceError,
    NotAllowedError,
    PoolUnavailableError,
    RepositoryNotFoundError,
    TransactionInProgressError,
    ZfsError,
)
from ..names import P_IMPORT, P_INHERITS, P_MODE, P_MOUNTPOINT, P_OWNER, P_REPO, P_STATE
from ..zfs.port import Batch, Snapshot, ZfsPort
from ..zfs.programs import on_off, u64
from .actions import Action, Apply, Rename, Rollback, SetNative, Unmount
from .history import transferable_chain
from .options import Owner, check_mountpoint, parse_mode
from .patterns import DEFAULT_MODE
from .records import Phase
from .status import PoolPropertyPolicy
from .view import PoolView, changes_since

#: On every repository a bundle lands in, before anything of it is ever mounted.
SAFE_PROPS = {"setuid": "off", "devices": "off"}


@attrs.frozen
class Incoming:
    """A snapshot the source carries: its short name, the GUID ZFS must give it, and the
    user properties to record on it (a send stream carries none)."""

    name: str
    guid: int
    user_props: Mapping[str, str] = attrs.Factory(dict)


class StreamPart(Protocol):
    """One part of a source: the stream of one snapshot."""

    @property
    def snapshot(self) -> Incoming: ...
    @property
    def label(self) -> str:
        """How messages name it ("part 2")."""
        ...

    def feed(self) -> AbstractContextManager[int]:
        """The descriptor ZFS reads the part from, positioned at its start; on a normal
        exit, raises if ZFS did not read exactly the part's bytes."""
        ...

    def refused(self, message: str) -> DsgStorageError:
        """The error for a part ZFS refused or got wrong: the damage the source's own
        checks find in it, if any, else ``message``."""
        ...


class StreamSource(Protocol):
    """What the transfer wing hands the core: a source whose claims, records and (if
    asked) signature were checked before anything changes. ``parts`` yields the parts in
    order and returns only once every byte the source still checks meanwhile was found
    good (the caller's commit point comes after); it raises the first damage found."""

    @property
    def name(self) -> str: ...
    @property
    def base(self) -> Incoming | None:
        """The snapshot it applies onto; None: a full source."""
        ...

    @property
    def snapshots(self) -> Sequence[Incoming]: ...

    def parts(self) -> Iterator[StreamPart]: ...


@attrs.frozen
class Receive:
    """Receive every part of ``source`` into ``target``, in order, without force."""

    target: str
    source: StreamSource

    def describe(self) -> str:
        shown = ", ".join(s.name for s in self.source.snapshots)
        return f"receive {len(self.source.snapshots)} snapshot(s) from {self.source.name} into {self.target}: {shown}"

    def apply(self, zfs: ZfsPort) -> None:
        for part in self.source.parts():
            snapshot = f"{self.target}@{part.snapshot.name}"
            try:
                with part.feed() as fd:
                    zfs.receive_from(fd, snapshot, force=False)
            except (NoSpaceError, PoolUnavailableError, DatasetBusyError, NotAllowedError):
                raise  # the pool's condition, not the stream's
            except BundleError:
                raise
            except ZfsError as exc:
                raise part.refused(f"ZFS refused {part.label}'s stream ({exc}); nothing was changed") from exc
            guid = u64(int((zfs.get_props(snapshot, ["guid"]) or {}).get("guid", 0)))
            if guid != part.snapshot.guid:
                raise part.refused(f"{part.label} made {snapshot} with GUID {guid}, not {part.snapshot.guid}")


@attrs.frozen
class RequireUnchanged:
    """Refuse (ConflictError) if ``filesystem`` has file changes since ``snapshot``."""

    filesystem: str
    snapshot: str  # full name

    def describe(self) -> str:
        return f"check {self.filesystem} has no changes since {self.snapshot}"

    def apply(self, zfs: ZfsPort) -> None:
        changed = changes_since(zfs, self.filesystem, self.snapshot, ignore_root=True)
        if changed:
            raise ConflictError(
                f"{self.filesystem} has changes since {self.snapshot.split('@', 1)[1]} that the import would "
                "discard: " + ", ".join(changed[:5]) + (" ..." if len(changed) > 5 else ""),
                dataset=self.filesystem,
                hint="commit them (or roll them back) and export a bundle from the new base",
            )


@attrs.frozen
class ReceivePlan:
    """What an import does, in order; ``actions[commit_point]`` is its commit point.
    Whatever fails before it is undone by recovery; after it, recovery's placement
    finishes it (mounted where it records, its owner and mode, unzoned)."""

    kind: str  # full | incremental
    repository: str
    tx: str
    actions: tuple[Action, ...]
    commit_point: int
    mountpoint: str | None
    owner: str
    mode: str

    def describe(self) -> list[str]:
        lines = [f"import ({self.kind}) into {self.repository}: transaction {self.tx}"]
        for index, action in enumerate(self.actions):
            lines.append(f"  {action.describe()}" + ("   <- the commit point" if index == self.commit_point else ""))
        lines.append(f"  then place {self.repository}: mounted where it records, owner {self.owner}, mode {self.mode}")
        return lines


@attrs.frozen
class Received:
    """What ``Repository.receive`` did: its plan, and each step that ran (the plan's
    actions, then recovery's placement)."""

    plan: ReceivePlan
    steps: tuple[str, ...]


def _snapshot_props(batch: Batch, target: str, source: StreamSource) -> Batch:
    return batch.set_each((f"{target}@{snap.name}", snap.user_props) for snap in source.snapshots)


def plan_full(
    view: PoolView, source: StreamSource, *, tx: str, mountpoint: str | None, owner: Owner, mode: int | None
) -> ReceivePlan:
    """A full source creating ``view.repository`` (see the module's docstring)."""
    into = view.repository
    if view.head is not None:
        raise DatasetExistsError(
            f"repository {into} exists: a full bundle creates a repository",
            dataset=into,
            hint="import into a new name, or import an incremental bundle",
        )
    parent = into.rsplit("/", 1)[0]
    if parent not in view.family:
        raise RepositoryNotFoundError(f"parent dataset {parent} of {into} does not exist", dataset=parent)
    inherited = view.inherited_mountpoint()
    target = mountpoint or inherited
    if target is None:
        raise InvalidArgumentError(f"{into} would have no mountpoint: give one", dataset=into)
    inherits = target == inherited  # as for transactions: no local mountpoint property then
    temp = names.receive_dataset(into, tx)
    mode_v = DEFAULT_MODE if mode is None else mode
    # One `zfs set` for the safe properties and the mountpoint: before the dataset is
    # ever mounted, the property only (-u). With the repository's own mountpoint also
    # zoned=on, so that ZFS does not mount it there at boot before the rename (as a
    # workspace, docs/archive/0012); the placement clears it once it is the repository.
    native = SAFE_PROPS if inherits else {**SAFE_PROPS, "mountpoint": target, "zoned": "on"}
    head = {
        P_REPO: into,
        P_MOUNTPOINT: target,
        P_INHERITS: "yes" if inherits else "no",
        P_OWNER: str(owner),
        P_MODE: f"{mode_v:04o}",
        P_STATE: Phase.COMMITTED.value,
    }
    actions: tuple[Action, ...] = (
        Receive(temp, source),  # returns once every part was received whole
        SetNative(temp, native),
        Apply(_snapshot_props(Batch().set(temp, head), temp, source)),
        Rename(temp, into),
    )
    return ReceivePlan("full", into, tx, actions, len(actions) - 1, target, str(owner), f"{mode_v:04o}")


def plan_incremental(
    view: PoolView,
    chain: Sequence[Snapshot],
    source: StreamSource,
    *,
    tx: str,
    owner: Owner | None,
    mode: int | None,
) -> ReceivePlan:
    """An incremental source applied onto ``view.repository``, whose transferable
    snapshots are ``chain`` (see the module's docstring)."""
    into, base = view.repository, source.base
    assert base is not None  # an incremental source has a base
    if view.head is None:
        raise RepositoryNotFoundError(
            f"repository {into} does not exist: an incremental bundle applies onto its base {base.name}",
            dataset=into,
        )
    if view.records():
        raise TransactionInProgressError(f"{into} has an open transaction: finish it first", dataset=into)
    latest = chain[-1] if chain else None
    if latest is None or latest.guid != base.guid:
        have = f"{latest.short_name} (guid {latest.guid})" if latest else "no snapshot"
        where = next((s.short_name for s in chain if s.guid == base.guid), None)
        detail = f"; {where} is there but is not the latest" if where else ""
        raise BundleError(
            f"wrong base: the bundle applies onto {base.name} (guid {base.guid}); "
            f"{into}'s latest snapshot is {have}{detail}. Nothing was changed",
        )
    have_names = {s.short_name for s in chain}
    clash = [s.name for s in source.snapshots if s.name in have_names]
    if clash:
        raise BundleError(f"{into} already has snapshot(s) {', '.join(clash)}. Nothing was changed")
    head = view.head
    new_head = {}
    if owner is not None:
        new_head[P_OWNER] = str(owner)
    if mode is not None:
        new_head[P_MODE] = f"{mode:04o}"
    # After the receive, so a refused bundle leaves them as they were; before the
    # author's content is ever mounted. Usually none: the repository came from a full import.
    unsafe = {prop: off for prop, off in SAFE_PROPS.items() if on_off(head.get(prop)) != off}
    done = _snapshot_props(Batch(), into, source).set(into, new_head).inherit(into, P_IMPORT).inherit(into, "zoned")
    actions: list[Action] = [
        # Unmounted for the whole import, so nothing can be written after the check and
        # then lost to the rollback or the receive; placed again at the end.
        Unmount(into),
        RequireUnchanged(into, latest.name),
        # Both or neither, in one `zfs set`: the mark (while it is there, recovery undoes
        # what arrived) and zoned=on (ZFS mounts no zoned dataset at boot: nothing
        # received shows at the repository's path before the commit point, even across a
        # reboot; our own mount(2) at the end ignores it).
        SetNative(into, {"zoned": "on", P_IMPORT: f"{tx} {latest.short_name}"}),
        Rollback(into),  # to the base, explicitly: what a mount's own metadata wrote
        Receive(into, source),
        *([SetNative(into, unsafe)] if unsafe else []),
        Apply(done),  # the commit point
    ]
    return ReceivePlan(
        "incremental",
        into,
        tx,
        tuple(actions),
        len(actions) - 1,
        None,
        new_head.get(P_OWNER, str(head.get(P_OWNER, ""))),
        new_head.get(P_MODE, str(head.get(P_MODE, ""))),
    )


def plan_receive(
    zfs: ZfsPort,
    view: PoolView,
    source: StreamSource,
    policy: PoolPropertyPolicy | None,
    *,
    tx: str,
    wanted: tuple[str | None, Owner | str | tuple[int, int] | None, str | int | None],
) -> ReceivePlan:
    """The plan ``Repository.receive`` runs (and its dry run prints) for ``source``:
    ``wanted`` (mountpoint, owner, mode: the caller's) checked, the pattern chosen by the
    source (full: no base), and every place root will act on checked before any change
    (the allow-list; the target, explicit or inherited from the pool, by ``policy`` and
    the one placement rule)."""
    mountpoint, owner, mode = wanted
    checked = check_mountpoint(mountpoint) if mountpoint is not None else None
    owner_v = Owner.parse(owner) if owner is not None else None
    mode_v = parse_mode(mode) if mode is not None else None
    repo = view.repository
    zfs.allow.check(repo)
    if source.base is None:
        zfs.allow.check(names.receive_dataset(repo, tx))
        plan = plan_full(view, source, tx=tx, mountpoint=checked, owner=owner_v or Owner.current(), mode=mode_v)
    else:
        chain = transferable_chain(zfs, repo) if view.head is not None else []
        plan = plan_incremental(view, chain, source, tx=tx, owner=owner_v, mode=mode_v)
    if plan.mountpoint is not None:
        if policy is not None:  # an inherited target was read from the pool
            policy.check_repository_props(repo, {P_MOUNTPOINT: plan.mountpoint})
        zfs.allow.check_place(plan.mountpoint)
    return plan
