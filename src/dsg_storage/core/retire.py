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

import os
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from .. import _log, names
from ..zfs.port import Batch
from .actions import Action, Apply, ReleaseMount, Unmount

log = _log.getLogger("dsg_storage")


class DestroyQueue(Protocol):
    """Where destroys that must wait go (``queue.Queue``)."""

    def add_destroy(self, target: str) -> object: ...


def retire_old_head(repo: str, tx: str, orphaned_mounts: Iterable[tuple[str, str]]) -> list[Action]:
    """The actions that retire transaction ``tx``'s old head of ``repo`` and its base.
    ``orphaned_mounts``: (source, path) of the read-only mounts dead readers left
    (``Host.orphaned_reader_mounts``); those of the old head are released."""
    old = names.old_dataset(repo, tx)
    released = [ReleaseMount(source, path) for source, path in orphaned_mounts if source.split("@")[0] == old]
    batch = Batch().promote(repo, required=False)  # if a held snapshot refused it at commit
    batch = batch.destroy(old, required=False).destroy(names.base_snapshot(repo, tx), required=False)
    return [*released, Unmount(old, lazy=True), Apply(batch)]


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
    return "@" in name or (parsed is not None and parsed[0] == repository and parsed[1] == "old")
