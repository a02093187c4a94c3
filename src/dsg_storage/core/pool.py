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
from .repository import Repository
from .status import PoolPropertyPolicy

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
    names.validate_pool(pool)
    found: set[str] = set()
    for under in (p for p in zfs.allow.prefixes if names.pool_of(p) == pool):
        for name, props in zfs.filesystems(under).items():
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
) -> list[Recovered]:
    """Recover every repository of ``pool`` that ``allow`` covers (``repositories_in``),
    one after the other, each under its own lock as ``Repository.recover`` (``settings``:
    where the locks and the queue are, default the environment's).

    A repository whose recovery fails (busy, damaged, the pool read-only) is reported in
    its ``Recovered.error`` and the others are still recovered; the caller decides what
    an error means (the command line exits non-zero). Safe to repeat, and to run beside
    any other call; after a crash in it, running it again finishes.
    """
    zfs = zfs if zfs is not None else open_zfs(allow)
    done = []
    for repository in repositories_in(zfs, pool):
        try:
            repo = Repository(repository, zfs=zfs, lock_timeout=lock_timeout, policy=policy, settings=settings)
            actions = repo.recover()
        except DsgStorageError as exc:
            done.append(Recovered(repository, error=exc))
        else:
            done.append(Recovered(repository, tuple(actions)))
    return done
