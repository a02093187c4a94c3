"""What the environment says to dsg-storage, read in one place: ``Settings.from_environ``.

Every environment variable the library and the command line heed is read here and
nowhere else; the layers below (``zfs``, ``core``, ``queue``, ``read``) take the values
as parameters. The command line resolves them once, at its start
(``Settings.for_cli``); a library entry point given nothing falls back to
``Settings.default()``, the process's environment read at that call (what its
docstring has always promised), so that a script setting a variable between two calls
still steers the second.

- ``DSG_STORAGE_ALLOW``: pools or dataset prefixes that may be changed (comma-separated);
- ``DSG_STORAGE_LOCK_DIR``: the repositories' step locks (``core.lock``);
- ``DSG_STORAGE_QUEUE``, ``DSG_STORAGE_QUEUE_MAX_PENDING``: the queue's file and bound;
- ``DSG_STORAGE_CACHE``: the read cache (``read.cache``);
- ``SUDO_UID``, ``SUDO_GID``, ``SUDO_USER``: who ran sudo (set by sudo itself);
- ``PYTHONPATH``: carried, with ours, into the hooks ``install-hooks`` writes;
- ``SANOID_TARGETS``, ``ZREPL_FS``: the datasets a snapshot tool runs its hook for
  (``snapshot-ok``).

A value left unset is None here: each module keeps its own default (``queue.DEFAULT_PATH``,
``core.lock.DEFAULT_DIR``, ...). Run through sudo, the command line ignores every
``DSG_STORAGE_*`` variable (``cli/sudo.py``): the policy decides instead.
"""

# A dataclass, not attrs, and no typing at run time: every command resolves its settings,
# `queue stats` included, which loads neither (README "Start-up cost").
from __future__ import annotations

import dataclasses
import os

from .zfs.allow import AllowList

TYPE_CHECKING = False  # not typing's: see dsg_storage/__init__.py
if TYPE_CHECKING:
    from collections.abc import Mapping

    from .core.options import Owner

PREFIX = "DSG_STORAGE_"
ALLOW = "DSG_STORAGE_ALLOW"
LOCK_DIR = "DSG_STORAGE_LOCK_DIR"
QUEUE = "DSG_STORAGE_QUEUE"
QUEUE_MAX_PENDING = "DSG_STORAGE_QUEUE_MAX_PENDING"
CACHE = "DSG_STORAGE_CACHE"
#: What the hooks ``install-hooks`` writes carry into the commands they run.
CARRIED = (ALLOW, QUEUE, LOCK_DIR, QUEUE_MAX_PENDING, "PYTHONPATH")


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """The environment's say, parsed; None (or empty) where it says nothing."""

    allow: AllowList = dataclasses.field(default_factory=AllowList)
    lock_dir: str | None = None
    queue_path: str | None = None
    queue_max_pending: int | None = None
    cache_path: str | None = None
    #: The variables the hooks carry (``CARRIED``), as given, non-empty ones only.
    carried: tuple[tuple[str, str], ...] = ()
    #: Who ran sudo, as sudo set it (checked by ``invoker``).
    sudo_uid: str | None = None
    sudo_gid: str | None = None
    sudo_user: str | None = None
    #: The datasets a snapshot tool's hook is run for (sanoid: ``SANOID_TARGETS``,
    #: comma-separated; zrepl: ``ZREPL_FS``), for ``snapshot-ok``.
    snapshot_targets: tuple[str, ...] = ()

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], *, steering: bool = True) -> Settings:
        """Read ``environ`` (the only reading of these variables); without ``steering``
        every ``DSG_STORAGE_*`` variable is left unread, as if unset.

        Raises InvalidNameError for an allow-list entry that is no pool or prefix,
        InvalidArgumentError for a bound that is no whole number from 1 to 10**9."""

        def get(key: str) -> str | None:
            if not steering and key.startswith(PREFIX):
                return None
            return environ.get(key) or None

        return cls(
            allow=AllowList.parse(get(ALLOW)),
            lock_dir=get(LOCK_DIR),
            queue_path=get(QUEUE),
            queue_max_pending=_max_pending(get(QUEUE_MAX_PENDING)),
            cache_path=get(CACHE),
            carried=tuple((key, value) for key in CARRIED if (value := get(key))),
            sudo_uid=environ.get("SUDO_UID"),
            sudo_gid=environ.get("SUDO_GID"),
            sudo_user=environ.get("SUDO_USER"),
            snapshot_targets=tuple(
                t.strip()
                for t in (environ.get("SANOID_TARGETS") or environ.get("ZREPL_FS") or "").split(",")
                if t.strip()
            ),
        )

    @classmethod
    def for_cli(cls, environ: Mapping[str, str]) -> Settings:
        """The command line's: ``DSG_STORAGE_*`` variables are ignored when run through
        sudo (``SUDO_UID`` set), since they would steer root (``cli/sudo.py``)."""
        found = cls.from_environ(environ, steering=False)
        return found if found.sudo else cls.from_environ(environ)

    @classmethod
    def default(cls) -> Settings:
        """This process's environment, read now: what a library call given nothing uses."""
        return cls.from_environ(os.environ)

    @property
    def sudo(self) -> bool:
        """Run through sudo: ``SUDO_UID`` is set."""
        return self.sudo_uid is not None

    @property
    def invoker(self) -> Owner | None:
        """The user who ran sudo (``SUDO_UID``/``SUDO_GID``, ASCII digits), or None.
        Raises PolicyError when they are not numbers."""
        return invoker(self.sudo_uid, self.sudo_gid)


def invoker(uid: str | None, gid: str | None) -> Owner | None:
    """The user behind sudo from ``SUDO_UID``/``SUDO_GID`` as sudo set them, or None."""
    if uid is None:
        return None
    from .core.options import Owner
    from .errors import PolicyError

    gid = gid or ""
    if not (uid + gid).isascii() or not uid.isdigit() or not gid.isdigit():
        raise PolicyError(f"SUDO_UID/SUDO_GID ({uid!r}, {gid!r}) are not numbers")
    return Owner.parse((int(uid), int(gid)))


def invoker_from_env(environ: Mapping[str, str]) -> Owner | None:
    """The user who ran sudo, from ``environ`` (``Settings.invoker``)."""
    return Settings.from_environ(environ, steering=False).invoker


def current_invoker() -> Owner | None:
    """The user who ran sudo, from this process's environment (read now), or None."""
    return invoker_from_env(os.environ)


def _max_pending(text: str | None) -> int | None:
    if text is None:
        return None
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 10**9:
        from .errors import InvalidArgumentError

        raise InvalidArgumentError(f"${QUEUE_MAX_PENDING} must be a whole number from 1 to 10**9, not {text!r}")
    return int(text)
