"""How an old head is retired, once its commit is final: the one rule recovery (state 5c)
and the queue (a deferred destroy of ``REPO.dsg-old-TX``) both follow.

A sync commit sets the repository aside as ``REPO.dsg-old-TX``, gives the workspace its
name and promotes it; the commit's last sync task destroys the old head and its base
(``REPO@dsg-base-TX``) when nothing holds them. When something did (a reader's mounted
snapshot refused the promote, a snapshot somebody took of the repository meanwhile, a
reader still inside), they are retired later by these actions: release the snapshot
mounts a dead reader left on the old head, detach it (readers still in it go on
reading), and in one sync task finish the promote, then destroy the old head and its
base. Every destroy is optional: what is still in use is left for the next try.
"""

from __future__ import annotations

from collections.abc import Iterable

from .. import names
from ..zfs.port import Batch
from .actions import Action, Apply, ReleaseMount, Unmount


def retire_old_head(repo: str, tx: str, orphaned_mounts: Iterable[tuple[str, str]]) -> list[Action]:
    """The actions that retire transaction ``tx``'s old head of ``repo`` and its base.
    ``orphaned_mounts``: (source, path) of the read-only mounts dead readers left
    (``Host.orphaned_reader_mounts``); those of the old head are released."""
    old = names.old_dataset(repo, tx)
    released = [ReleaseMount(source, path) for source, path in orphaned_mounts if source.split("@")[0] == old]
    batch = Batch().promote(repo, required=False)  # if a held snapshot refused it at commit
    batch = batch.destroy(old, required=False).destroy(names.base_snapshot(repo, tx), required=False)
    return [*released, Unmount(old, lazy=True), Apply(batch)]
