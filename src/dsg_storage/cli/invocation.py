"""Who runs the command, and so what it may do: the ``Caller`` every command asks.

Two variants answer the same questions: ``Direct`` (here: root itself, or a user without
privileges of their own: flags and ``DSG_STORAGE_*`` variables steer the command and
nothing is narrowed) and the variant for a command run through sudo (``SUDO_UID`` set:
the policy decides), which builds on this module's ``Input`` and ``Direct``, never the
other way round. Which one a command gets is decided where the command line starts
(``context.invocation``). ``Direct`` needs nothing of the policy's machinery, so a
command that touches no ZFS (``queue stats``) pays for none of it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .. import hostfs
from ..zfs.allow import AllowList

TYPE_CHECKING = False  # not typing's: see dsg_storage/__init__.py
if TYPE_CHECKING:
    from contextlib import AbstractContextManager
    from typing import Protocol

    from ..core.options import Owner
    from ..policy import SudoPolicy
    from ..transfer.importing import Source

    class Caller(Protocol):
        """What every command asks before it acts (``Direct``, or through sudo the
        policy's answers). A type only: nothing at run time needs typing for it."""

        @property
        def invoker(self) -> Owner | None: ...
        @property
        def policy(self) -> SudoPolicy | None: ...
        @property
        def ignored(self) -> tuple[str, ...]: ...
        @property
        def sudo(self) -> bool: ...
        @property
        def signatures_required(self) -> bool: ...
        @property
        def cache_owner(self) -> tuple[int, int] | None: ...

        def allow(self, caller: AllowList) -> AllowList: ...
        def check_dataset(self, name: str | None) -> None: ...
        def mountpoint(self, path: str | None) -> str | None: ...
        def owner(self, owner: str | None, *, creating: bool) -> str | None: ...
        def properties(self, props: dict[str, str]) -> dict[str, str]: ...
        def output(self, path: str, *, force: bool) -> hostfs.OutputFile: ...
        def cache_path(self, path: str | None) -> str | None: ...
        def input(
            self, path: str, *, private: bool = False, check: Callable[[str], object] | None = None
        ) -> AbstractContextManager[Input]: ...
        def signers(self, given: str | None) -> str | None: ...
        def refuse(self, what: str) -> None: ...


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

    def properties(self, props: dict[str, str]) -> dict[str, str]:
        return props

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
