"""The steps the core takes, as small values: planned by pure functions (``plan``,
``patterns``), printed by a dry run, applied one by one by ``execute``.

Each action is one change through the boundary (``ZfsPort``); ``describe`` says it in
a line, ``apply`` makes it. A ``Batch`` is one action: one ZFS sync task.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

import attrs

from ..zfs.port import Batch, BatchResult, ZfsPort
from .options import Owner


class Action(Protocol):
    def describe(self) -> str: ...
    def apply(self, zfs: ZfsPort) -> BatchResult | None: ...


def _frozen_props(props: Mapping[str, str | int]) -> tuple[tuple[str, str | int], ...]:
    return tuple(sorted(props.items()))


@attrs.frozen
class Create:
    dataset: str
    props: tuple[tuple[str, str | int], ...] = attrs.field(converter=_frozen_props)

    def describe(self) -> str:
        return f"create {self.dataset}"

    def apply(self, zfs: ZfsPort) -> None:
        zfs.create(self.dataset, dict(self.props))


@attrs.frozen
class Clone:
    dataset: str
    origin: str
    props: tuple[tuple[str, str | int], ...] = attrs.field(converter=_frozen_props)

    def describe(self) -> str:
        return f"clone {self.origin} as {self.dataset}"

    def apply(self, zfs: ZfsPort) -> None:
        zfs.clone(self.dataset, self.origin, dict(self.props))


@attrs.frozen
class Apply:
    """A batch of changes in one ZFS sync task (see ``zfs.programs.Batch``)."""

    batch: Batch

    def describe(self) -> str:
        return "in one sync task: " + "; ".join(self.batch.describe())

    def apply(self, zfs: ZfsPort) -> BatchResult:
        return zfs.apply(self.batch)


@attrs.frozen
class Rename:
    source: str
    target: str

    def describe(self) -> str:
        return f"rename {self.source} to {self.target}"

    def apply(self, zfs: ZfsPort) -> None:
        zfs.rename(self.source, self.target)


@attrs.frozen
class Destroy:
    """Destroy a filesystem (unmounted first) and, with ``snapshots``, its snapshots."""

    dataset: str
    snapshots: bool = False

    def describe(self) -> str:
        return f"destroy {self.dataset}" + (" and its snapshots" if self.snapshots else "")

    def apply(self, zfs: ZfsPort) -> None:
        if self.snapshots:
            zfs.destroy_with_snapshots(self.dataset)
        else:
            zfs.destroy(self.dataset)


@attrs.frozen
class DestroySnapshots:
    names: tuple[str, ...]

    def describe(self) -> str:
        return f"destroy snapshots {', '.join(self.names)}"

    def apply(self, zfs: ZfsPort) -> None:
        zfs.destroy_snapshots(list(self.names))


@attrs.frozen
class Rollback:
    filesystem: str

    def describe(self) -> str:
        return f"roll {self.filesystem} back to its latest snapshot"

    def apply(self, zfs: ZfsPort) -> None:
        zfs.rollback(self.filesystem)


@attrs.frozen
class SetMountpoint:
    dataset: str
    path: str

    def describe(self) -> str:
        return f"set mountpoint={self.path} on {self.dataset} (zfs set -u: the property, not the mount)"

    def apply(self, zfs: ZfsPort) -> None:
        zfs.set_mountpoint(self.dataset, self.path)


@attrs.frozen
class SetNative:
    """Native properties (and user ones with them) in one ``zfs set -u``."""

    dataset: str
    props: tuple[tuple[str, str | int], ...] = attrs.field(converter=_frozen_props)

    def describe(self) -> str:
        return f"set {', '.join(f'{k}={v}' for k, v in self.props)} on {self.dataset} (zfs set -u)"

    def apply(self, zfs: ZfsPort) -> None:
        zfs.set_native_props(self.dataset, {key: str(value) for key, value in self.props})


@attrs.frozen
class Mount:
    dataset: str
    path: str
    #: the mount(2) flags read at this moment (``PoolView.mount_flags``); None: read them now
    flags: int | None = attrs.field(default=None, eq=False)

    def describe(self) -> str:
        return f"mount {self.dataset} at {self.path}"

    def apply(self, zfs: ZfsPort) -> None:
        zfs.host.mount(self.dataset, self.path, flags=self.flags)


@attrs.frozen
class Unmount:
    dataset: str
    path: str | None = None  # None: wherever it is mounted
    lazy: bool = False  # detach: whoever still reads in it goes on reading

    def describe(self) -> str:
        where = f" from {self.path}" if self.path else ""
        return f"detach {self.dataset}{where} (readers keep it)" if self.lazy else f"unmount {self.dataset}{where}"

    def apply(self, zfs: ZfsPort) -> None:
        zfs.host.unmount(self.dataset, self.path, lazy=self.lazy)


@attrs.frozen
class Freeze:
    """Remount read-only: nobody writes any more; readers read on. A writer refuses it."""

    dataset: str
    path: str
    wait: float = 0.0

    def describe(self) -> str:
        return f"remount {self.dataset} at {self.path} read-only"

    def apply(self, zfs: ZfsPort) -> None:
        zfs.host.freeze(self.dataset, self.path, wait=self.wait)


@attrs.frozen
class Thaw:
    dataset: str
    path: str

    def describe(self) -> str:
        return f"remount {self.dataset} at {self.path} read-write"

    def apply(self, zfs: ZfsPort) -> None:
        zfs.host.thaw(self.dataset, self.path)


@attrs.frozen
class ReleaseMount:
    """Take away a read-only mount a reader that died left behind."""

    source: str
    path: str

    def describe(self) -> str:
        return f"unmount {self.source} from {self.path} (left by a reader that is gone)"

    def apply(self, zfs: ZfsPort) -> None:
        zfs.host.release_mount(self.source, self.path)


@attrs.frozen
class RemoveDir:
    path: str

    def describe(self) -> str:
        return f"remove the empty directory {self.path}"

    def apply(self, zfs: ZfsPort) -> None:
        zfs.host.remove_dir(self.path)


@attrs.frozen
class ApplyOwner:
    """Give the root of ``dataset``, mounted at ``path``, its owner and mode."""

    path: str
    owner: Owner
    mode: int
    dataset: str

    def describe(self) -> str:
        return f"give {self.path} owner {self.owner} and mode {self.mode:04o}"

    def apply(self, zfs: ZfsPort) -> None:
        zfs.host.apply_owner(self.dataset, self.path, self.owner.uid, self.owner.gid, self.mode)


@attrs.frozen
class Outcome:
    """What applying some actions produced: destroys that had to be skipped (name ->
    errno) and the snapshots made (name -> (guid, createtxg))."""

    skipped: Mapping[str, int] = attrs.Factory(dict)
    created: Mapping[str, tuple[int, int]] = attrs.Factory(dict)


def execute(zfs: ZfsPort, actions: Iterable[Action]) -> Outcome:
    """Apply ``actions`` in order; stop at the first that fails (its error propagates)."""
    skipped: dict[str, int] = {}
    created: dict[str, tuple[int, int]] = {}
    for action in actions:
        result = action.apply(zfs)
        if result is not None:
            skipped.update(result.skipped)
            created.update(result.created)
    return Outcome(skipped, created)
