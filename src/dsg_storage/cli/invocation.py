"""Who runs the command, and so what it may do: ``invocation(environ, settings)``.

Two variants with the same questions: ``Direct`` (root itself, or a user without
privileges of their own: flags and ``DSG_STORAGE_*`` variables steer the command and
nothing is narrowed) and ``sudo.Invocation`` (run through sudo, ``SUDO_UID`` set: the
policy decides). ``Direct`` needs nothing of the policy's machinery, so a command that
touches no ZFS (``queue stats``) pays for none of it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass

from .. import hostfs
from ..zfs.allow import AllowList

TYPE_CHECKING = False  # not typing's: see dsg_storage/__init__.py
if TYPE_CHECKING:
    from typing import TypeAlias

    from ..settings import Settings
    from ..transfer.importing import Source
    from .sudo import Invocation

    Caller: TypeAlias = "Direct | Invocation"  # what every command asks before it acts


def invocation(environ: MutableMapping[str, str], settings: Settings | None = None) -> Caller:
    """``sudo.Invocation.from_environment`` when run through sudo (``settings.sudo``), else
    ``Direct`` with the environment's allow-list. ``settings``: what ``environ`` says
    (default: read from it, ``Settings.for_cli``)."""
    if settings is None:
        from ..settings import Settings

        settings = Settings.for_cli(environ)
    if not settings.sudo:
        return Direct(settings.allow)
    from .sudo import Invocation

    return Invocation.from_environment(environ, settings=settings)


@dataclass(frozen=True, slots=True)
class Input:
    """A file the command reads for its caller: the ``path`` to open it by and, when
    someone else opened it for them (sudo), how the caller named it (``source``, a
    ``transfer.importing.Source``; None: ``path`` is the caller's own name for it)."""

    path: str
    source: Source | None = None


class Direct:
    """Not run through sudo: what the caller asks is what is done; ``allowed`` is the
    environment's allow-list (``$DSG_STORAGE_ALLOW``, ``Settings.allow``)."""

    invoker = None
    policy = None
    ignored: tuple[str, ...] = ()
    sudo = False
    signatures_required = False
    cache_owner = None

    def __init__(self, allowed: AllowList | None = None) -> None:
        self.allowed = allowed if allowed is not None else AllowList()

    def allow(self, caller: AllowList) -> AllowList:
        """The caller's allow-list (``--allow``) and ``$DSG_STORAGE_ALLOW``."""
        return self.allowed | caller

    def check_dataset(self, name: str | None) -> None:
        pass

    def mountpoint(self, path: str | None) -> str | None:
        return path

    def owner(self, owner: str | None, *, creating: bool) -> str | None:
        return owner

    def output(self, path: str, *, force: bool) -> hostfs.OutputFile:
        return hostfs.OutputFile(path)

    def cache_path(self, path: str | None) -> str | None:
        return path

    @contextlib.contextmanager
    def input(
        self, path: str, *, private: bool = False, check: Callable[[str], object] | None = None
    ) -> Iterator[Input]:
        yield Input(path)  # the caller reads as themselves: their own file is theirs to change

    def signers(self, given: str | None) -> str | None:
        return given

    def refuse(self, what: str) -> None:
        pass
