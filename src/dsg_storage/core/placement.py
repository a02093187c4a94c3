"""Where a repository is mounted, and by whom it is owned: planned from a PoolView.

After every step the repository is mounted at its mountpoint, alone (not stacked, not
also at a workspace path), with its root owned as recorded. These functions say which
actions get it there from what the view shows; they change nothing themselves.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import CorruptStateError, DsgStorageError
from ..names import P_INHERITS, P_MODE, P_MOUNTPOINT, P_OWNER
from .actions import Action, ApplyOwner, Mount, SetMountpoint, Unmount
from .options import Owner, check_mountpoint, parse_mode
from .view import PoolView


def place_head(  # noqa: PLR0917  the view, then a head's placement as recorded_placement returns it
    view: PoolView, mountpoint: str, inherits: bool, owner: Owner, mode: int, others: Sequence[str] = ()
) -> list[Action]:
    """Mount the repository at ``mountpoint``, alone, with its owner and mode.

    ``others`` (old heads: still mounted there after a commit, or auto-mounted by an
    import) are detached first: whoever still reads in them goes on reading. Without an
    inherited mountpoint the ``mountpoint`` property is set too (only the property), so
    the repository is mounted there after a reboot as well.
    """
    repo = view.repository
    actions: list[Action] = [Unmount(other, lazy=True) for other in others if view.mounted_at(other)]
    # e.g. still mounted at the workspace path after an import
    actions += [Unmount(repo, path) for path in view.mounted_at(repo) if path != mountpoint]
    if not inherits and (view.head or {}).get("mountpoint") != mountpoint:
        actions.append(SetMountpoint(repo, mountpoint))
    if mountpoint not in view.mounted_at(repo):
        # Flags read with the view are of this moment: only unmounts and the mountpoint
        # property lie between (docs/archive/0002); otherwise they are read at the mount.
        actions.append(Mount(repo, mountpoint, flags=view.mount_flags.get(repo)))
    actions.append(ApplyOwner(mountpoint, owner, mode, repo))
    return actions


def recorded_placement(view: PoolView) -> tuple[str, bool, Owner, int] | None:
    """(mountpoint, inherits, owner, mode) as the repository records them; None when it
    was not created by dsg-storage (its mounts are its owner's business)."""
    head = view.head or {}
    mountpoint = head.get(P_MOUNTPOINT) or head.get("mountpoint", "")
    if P_OWNER not in head or not mountpoint.startswith("/"):
        return None
    try:
        return (
            check_mountpoint(mountpoint),
            head.get(P_INHERITS) == "yes",
            Owner.parse_ids(head[P_OWNER]),
            parse_mode(head.get(P_MODE, "0755")),
        )
    except DsgStorageError as exc:
        raise CorruptStateError(
            f"{view.repository}: its recorded mountpoint, owner or mode cannot be used ({exc})",
            dataset=view.repository,
        ) from exc


def place_recorded_head(view: PoolView) -> list[Action]:
    """Mount the repository where it records it should be, if it is not mounted there."""
    placement = recorded_placement(view)
    if placement is None or placement[0] in view.mounted_at(view.repository):
        return []
    return place_head(view, *placement, others=tuple(view.temporaries("old").values()))
