"""The pool as a transfer out of it reads it: the core's hand-off to the transfer wing,
which opens no ZFS boundary of its own.

The boundary that can change nothing (an export and a lock file only read), the chain of
snapshots a bundle may carry, what a repository records of its owner and mode, and the
version of ZFS. The streams themselves come through the port (``ZfsPort.send_to``,
``ZfsPort.send_space``). Nothing here changes the pool: after a crash there is nothing
to undo.
"""

from __future__ import annotations

from typing import Any

from ..names import P_MODE, P_OWNER
from ..zfs.allow import AllowList
from ..zfs.boundary import open_zfs
from ..zfs.boundary import zfs_version as _zfs_version
from ..zfs.port import ZfsPort
from .history import transferable_chain


def reading(zfs: ZfsPort | None = None) -> ZfsPort:
    """``zfs``, or else the boundary opened with an empty allow list: it can change nothing."""
    return zfs or open_zfs(AllowList(()))


def owner_and_mode(zfs: ZfsPort, repo: str) -> dict[str, Any] | None:
    """What ``repo`` records of its owner and mode (``P_OWNER``, ``P_MODE``; a bundle
    shows them, an import never applies them); None when there is no such dataset."""
    return zfs.get_props(repo, [P_OWNER, P_MODE])


def zfs_version() -> str:
    """The loaded ZFS kernel module's version, e.g. "2.3.9-1", which a bundle records."""
    return _zfs_version()


__all__ = ["owner_and_mode", "reading", "transferable_chain", "zfs_version"]
