"""How what a transaction set aside is retired, once the transaction is final: the one
rule the commit's last sync task, recovery (states 5c, 5d) and the queue follow, and
what other tools' snapshots of it change (docs/archive/0014-living-beside-other-tools.md).

A sync commit sets the repository aside as ``REPO.dsg-old-TX``, gives the workspace its
name and promotes it; the commit's last sync task destroys the old head and its base
(``REPO@dsg-base-TX``) when nothing holds them. An undone transaction whose temporary
dataset another tool holds a snapshot of is kept as ``REPO.dsg-gone-TX``.

**Snapshots other tools took** of a temporary after its base (a snapshot tool's
``REPO@autosnap_...`` lands on the old head when taken during the transaction; a
recursive ``zfs snapshot -r PARENT@x`` lands on every temporary too) are not ours, but
they keep what they belong to from being destroyed. The old head is unchanged since the
base (commit refuses otherwise), so each of its foreign snapshots shows exactly what the
base shows: the base is renamed to the newest of them on the repository (where the tool
looks for it, showing what the repository held at that moment), and they are destroyed
with the old head. What is held by a tag, or bookmarked, is left with what it belongs to,
which ``status`` then names with the reason; the next call retries. Every destroy is
optional: what is still in use is left for the next try.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

import attrs

from .. import _log, names
from ..names import P_LEFT_BASES
from ..zfs.port import Batch, Foreign, ZfsPort
from .actions import Action, Apply, ReleaseMount, Unmount

log = _log.getLogger("dsg_storage")


class DestroyQueue(Protocol):
    """Where destroys that must wait go (``queue.Queue``)."""

    def add_destroy(self, target: str) -> object: ...


def retire_old_head(
    repo: str,
    tx: str,
    orphaned_mounts: Iterable[tuple[str, str]],
    foreign: Foreign | None = None,
    left: Iterable[str] = (),
) -> list[Action]:
    """The actions that retire transaction ``tx``'s old head of ``repo`` and its base.
    ``orphaned_mounts``: (source, path) of the read-only mounts dead readers left
    (``Host.orphaned_reader_mounts``); those of the old head are released. ``foreign``:
    what other tools made of the old head since the base (``ZfsPort.foreign``)."""
    old = names.old_dataset(repo, tx)
    released = [ReleaseMount(source, path) for source, path in orphaned_mounts if source.split("@")[0] == old]
    batch = Batch().promote(repo, required=False)  # if a held snapshot refused it at commit
    return [*released, Unmount(old, lazy=True), Apply(retiring(batch, repo, tx, foreign or Foreign(), left=left))]


def destroy_base(batch: Batch, repo: str, tx: str, left: Iterable[str]) -> Batch:
    """``batch`` followed by the optional destroy of ``tx``'s base, noting on the
    repository whether it is left (a tool holds it: syncoid and zrepl may, since while a
    transaction is open it is the repository's newest snapshot), so that recovery on
    any host retries it (state 5e), not only this host's queue."""
    noted = set(left) - {tx}
    return batch.destroy_noted(
        names.base_snapshot(repo, tx),
        repo,
        P_LEFT_BASES,
        if_kept=" ".join(sorted(noted | {tx})),
        if_gone=" ".join(sorted(noted)),
    )


def retiring(
    batch: Batch, repo: str, tx: str, foreign: Foreign, *, kind: str = "old", left: Iterable[str] = ()
) -> Batch:
    """``batch`` followed by the retiring of ``tx``'s temporary of ``kind`` (``old`` head,
    or an undone temporary kept, ``gone``) and its base: its foreign snapshots destroyed
    (the newest one's name given to the base first, for an old head), then it, then the
    base. What is held stays, and what it belongs to with it; a bookmark keeps the
    temporary too. All optional."""
    temp = names.old_dataset(repo, tx) if kind == "old" else names.gone_dataset(repo, tx)
    base = names.base_snapshot(repo, tx)
    unheld = [name for name, tags in foreign.snapshots if not tags]
    if kind == "old" and foreign.snapshots:  # each shows what the base shows (see the docstring)
        batch = batch.rename_snapshot(base, foreign.snapshots[-1][0])
    for name in unheld:
        batch = batch.destroy(f"{temp}@{name}", required=False)
    if not foreign.bookmarks:  # while a snapshot is held this fails: queued, retried (``defer``)
        batch = batch.destroy(temp, required=False)
    return batch if kind == "old" and foreign.snapshots else destroy_base(batch, repo, tx, left)


@attrs.frozen
class DestroyTemporary:
    """Undo's last step on a temporary dataset: destroy the snapshots other tools took of
    it since its base (a recursive snapshot of the parent; they show uncommitted work),
    then it. When one of them is held or bookmarked, the temporary is renamed
    ``REPO.dsg-gone-TX`` instead (unmounted already): kept for that tool, out of every
    transaction's way, destroyed by recovery once it can be (``retiring``)."""

    dataset: str
    bases: tuple[str, ...]  # where its base may be (none: an init's)
    gone: str

    def describe(self) -> str:
        return f"destroy {self.dataset}"

    def apply(self, zfs: ZfsPort) -> None:
        foreign = zfs.foreign(self.dataset, self.bases)
        unheld = [f"{self.dataset}@{name}" for name, tags in foreign.snapshots if not tags]
        if unheld:
            log.warning("%s: destroying snapshots other tools took of it: %s", self.dataset, ", ".join(unheld))
            zfs.destroy_snapshots(unheld)
        if foreign.held or foreign.bookmarks:
            log.warning("%s kept as %s: %s", self.dataset, self.gone, foreign.why_kept())
            zfs.rename(self.dataset, self.gone)
            return
        zfs.destroy(self.dataset)


def defer(repository: str, skipped: Mapping[str, int], queue: Callable[[], DestroyQueue]) -> None:
    """Queue the destroys of what ``repository`` retired that could not run now
    (``skipped``: name -> errno) in the queue ``queue()`` opens. Recovery also
    retries them from the pool itself, so a queue that cannot be written loses nothing
    (it is logged). A promote a held snapshot refused (of the repository, or of a
    workspace at the start of its commit) is not queued: the commit's last batch or the
    queued destroy of the old head does it."""
    left = ", ".join(f"{name} ({os.strerror(code)})" for name, code in skipped.items())
    destroys = sorted((name for name in skipped if _retired(repository, name)), key=lambda n: "@" in n)
    import sqlite3  # here, as the queue: only a commit that must defer a destroy opens it

    try:
        opened = queue()
        for name in destroys:  # dependents (filesystems) first
            opened.add_destroy(name)
    except (OSError, sqlite3.Error) as exc:
        log.error("%s: cannot destroy %s yet, and cannot queue it (%s); recovery will retry", repository, left, exc)
        return
    log.warning("%s: cannot destroy %s yet; queued ('dsg-storage queue list')", repository, left)


def _retired(repository: str, name: str) -> bool:
    """Whether a skipped change was the destroy of something retired (an old head or a
    snapshot), not a promote."""
    parsed = names.parse_temporary(name)
    return "@" in name or (parsed is not None and parsed[0] == repository and parsed[1] in ("old", "gone"))
