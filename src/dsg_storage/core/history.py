"""A repository's snapshots in the order of its history, across a promote still due.

A sync commit promotes the workspace (a clone of ``REPO@dsg-base-TX``), which hands the
older snapshots over from the repository, and makes it the repository. When a reader
holds one of them (a mounted snapshot), ZFS refuses the promote; it is done later
(recovery, the queue) and meanwhile the older part of the history still lives on
``REPO.dsg-old-TX``, the repository's origin. A commit refused after its promote leaves
the repository a clone of its open workspace until the transaction ends. ``lineage``
reads through that origin, so history, reads of old commits and bundle exports see the
whole history either way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .. import names
from ..zfs.port import Catalog, Snapshot, ZfsPort


def lineage(
    zfs: Catalog, repository: str, *, head: Mapping[str, str] | None = None, guarded: bool = False
) -> list[Snapshot]:
    """Snapshots of ``repository``, oldest first, preceded by those of an old head (or,
    after a commit that failed past its promote, of the open workspace) it is still a
    clone of, up to its origin. ``head``: the repository's properties as the caller has
    just read them (its family's), whose ``origin`` saves a read. ``guarded``: the
    repository's own snapshots come with their holds and clones, read with them (an old
    head's do not: nothing prunes them through the repository)."""
    if head is None or guarded:
        origin, own = zfs.origin_and_snapshots(repository, guarded=guarded)
    else:
        origin, own = head.get("origin", ""), zfs.snapshots(repository)
    source = origin.split("@", 1)[0]
    parsed = names.parse_temporary(source)
    if not parsed or parsed[0] != repository or parsed[1] not in ("old", "ws"):
        return own
    earlier = zfs.snapshots(source)
    upto = next((s.createtxg for s in earlier if s.name == origin), None)
    if upto is None:
        return own
    return [s for s in earlier if s.createtxg <= upto] + own


def transferable(snapshots: Sequence[Snapshot]) -> list[Snapshot]:
    """The snapshots a bundle carries and an import's base is found among: all but a
    transaction's temporary base."""
    return [s for s in snapshots if not s.short_name.startswith("dsg-base-")]


def transferable_chain(zfs: ZfsPort, repo: str) -> list[Snapshot]:
    """``repo``'s snapshots that a bundle may carry, oldest first, across a promote still
    due (``lineage``)."""
    return transferable(lineage(zfs, repo))


def find_snapshot(zfs: Catalog, repository: str, short: str) -> str | None:
    """The full name of ``repository``'s snapshot ``short`` wherever its history keeps it."""
    return next((s.name for s in lineage(zfs, repository) if s.short_name == short), None)
