"""Every repository of a pool at once: what a pool import (a reboot) calls for.

After a reboot ZFS mounts what it can, and that is not everything dsg-storage keeps in
place: an open transaction's workspace in the explicit layout is ``zoned=on`` (so that it
never appears at the repository's path at boot) and waits for the next call on its
repository; so does a repository whose bundle import or commit a crash interrupted.
``recover_pool`` (``dsg-storage recover --pool POOL``, run by the zedlet
``install-hooks`` writes) recovers each allowed repository of the pool in turn, as
``Repository.recover`` does.
"""

from __future__ import annotations

import attrs

from .. import names
from ..errors import DsgStorageError
from ..names import P_OWNER
from ..zfs.allow import AllowList
from ..zfs.boundary import open_zfs
from ..zfs.port import ZfsPort
from .recovery import plan_recovery
from .status import PoolPropertyPolicy
from .view import family_in, members_by_repository, mount_table, quiet_view

TYPE_CHECKING = False  # not typing's: see dsg_storage/__init__.py
if TYPE_CHECKING:
    from ..settings import Settings


@attrs.frozen
class Recovered:
    """One repository's recovery: what was done, or the error that stopped it."""

    repository: str
    actions: tuple[str, ...] = ()
    error: DsgStorageError | None = None


def repositories_in(zfs: ZfsPort, pool: str) -> list[str]:
    """The repositories of ``pool`` that ``zfs``'s allow-list covers, by name: datasets
    dsg-storage initialized, and repositories known only by a temporary dataset (an init
    or a full bundle import not finished)."""
    return _repositories(zfs, _listing(zfs, pool))


def _listing(zfs: ZfsPort, pool: str) -> dict[str, dict[str, str]]:
    """Every filesystem under the allow-list's prefixes in ``pool``, described as a
    family's members are (``ZfsPort.families``): one read per prefix."""
    names.validate_pool(pool)
    found: dict[str, dict[str, str]] = {}
    for under in (p for p in zfs.allow.prefixes if names.pool_of(p) == pool):
        found.update(zfs.families(under))
    return found


def _repositories(zfs: ZfsPort, listing: dict[str, dict[str, str]]) -> list[str]:
    found: set[str] = set()
    for name, props in listing.items():
        temporary = names.parse_temporary(name)
        if temporary:
            found.add(temporary[0])
        elif P_OWNER in props:
            found.add(name)
    return sorted(r for r in found if zfs.allow.allows(r))


def recover_pool(
    pool: str,
    *,
    allow: AllowList | str | None = None,
    zfs: ZfsPort | None = None,
    lock_timeout: float = 10.0,
    policy: PoolPropertyPolicy | None = None,
    settings: Settings | None = None,
    lists: ZfsPort | None = None,
) -> list[Recovered]:
    """Recover every repository of ``pool`` that ``allow`` covers (``repositories_in``),
    one after the other, each under its own lock as ``Repository.recover`` (``settings``:
    where the locks and the queue are, default the environment's).

    The pool is read once (every repository's family, the mount table); a repository
    that reading shows quiet (no temporary dataset, nothing unfinished) and for which
    recovery would plan nothing is reported as such without its lock or another read,
    so the cost grows with the pool's size, not with a process or a lock per repository.
    ``lists``: the boundary that pool-wide read goes through (default ``zfs``; the command
    line gives one that lists by ``zfs get``, so that a pool with nothing to recover
    never loads libzfs_core); a repository it shows anything unfinished on is read again
    through ``zfs`` before anything is done.

    A repository whose recovery fails (busy, damaged, the pool read-only) is reported in
    its ``Recovered.error`` and the others are still recovered; the caller decides what
    an error means (the command line exits non-zero). Safe to repeat, and to run beside
    any other call; after a crash in it, running it again finishes.
    """
    zfs = zfs if zfs is not None else open_zfs(allow)
    listing = _listing(lists or zfs, pool)
    members = members_by_repository(listing)
    mounts, orphaned = mount_table(zfs.host.mounts()), zfs.host.orphaned_reader_mounts()
    done = []
    for repository in _repositories(zfs, listing):
        if _nothing_to_do(listing, members, repository, mounts, orphaned, policy):
            done.append(Recovered(repository))
            continue
        from .repository import Repository  # here: a pool with nothing to recover never loads it

        try:
            repo = Repository(repository, zfs=zfs, lock_timeout=lock_timeout, policy=policy, settings=settings)
            actions = repo.recover()
        except DsgStorageError as exc:
            done.append(Recovered(repository, error=exc))
        else:
            done.append(Recovered(repository, tuple(actions)))
    return done


def _nothing_to_do(  # noqa: PLR0917  the pool-wide reads, made once, then the repository
    listing: dict[str, dict[str, str]],
    members: dict[str, list[str]],
    repository: str,
    mounts: dict[str, tuple[str, ...]],
    orphaned: list[tuple[str, str]],
    policy: PoolPropertyPolicy | None,
) -> bool:
    """Whether the pool-wide read alone shows that ``Repository.recover`` would do nothing:
    a quiet repository (``quiet_view``) that passes the policy and for which recovery plans
    no step, or a replica (never acted on). Anything else, an error included, takes the
    full way, which reads again under the lock and reports what it finds."""
    family = family_in(listing, repository, members)
    seen = quiet_view(family, repository, mounts, orphaned) if family is not None else None
    if seen is None:
        return False
    try:
        if policy is not None:
            policy.check_repository_props(repository, seen.head or {})
        return seen.replica or not plan_recovery(seen)
    except DsgStorageError:
        return False
