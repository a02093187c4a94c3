"""Reads of one moment asked together: one channel program answers several.

A commit reads the pool at a few moments (docs/archive/0002); what it reads at one
moment (nothing of ours changes the pool between) costs one program, not one each.
Each read is a small object that names the program that answers it, its arguments and
how its answer is parsed (``Zfs.together`` runs several in one program), and the port
method that answers it alone (``ask``: a pool that refuses channel programs, the fake
pool of the unit tests).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import attrs

from .. import names
from . import programs
from .mounts import MOUNT_FLAG_PROPS
from .port import Foreign, ZfsPort


class Read(Protocol):
    @property
    def dataset(self) -> str: ...  # what the read is of (its pool runs the program; errors name it)
    @property
    def source(self) -> str: ...
    def args(self) -> list[str]: ...
    def parse(self, raw: Any) -> Any: ...
    def ask(self, zfs: ZfsPort) -> Any: ...


@attrs.frozen
class FamilyRead:
    """``ZfsPort.family``."""

    dataset: str
    source = programs.FAMILY

    def args(self) -> list[str]:
        return [self.dataset.rsplit("/", 1)[0], self.dataset, names.PROP_PREFIX]

    def parse(self, raw: Any) -> dict[str, dict[str, str]]:
        return {name: dict(props) for name, props in (raw or {}).items()}

    def ask(self, zfs: ZfsPort) -> dict[str, dict[str, str]]:
        return zfs.family(self.dataset)


@attrs.frozen
class ForeignRead:
    """``ZfsPort.foreign``."""

    dataset: str
    bases: Sequence[str]
    written_of: str | None = None
    source = programs.FOREIGN

    def args(self) -> list[str]:
        return [self.dataset, self.written_of or "", *self.bases]

    def parse(self, raw: Any) -> Foreign:
        return Foreign.parse(raw)

    def ask(self, zfs: ZfsPort) -> Foreign:
        return zfs.foreign(self.dataset, self.bases, written_of=self.written_of)


@attrs.frozen
class MountFlagsRead:
    """``ZfsPort.mount_flags``: what a mount of the same moment is made with."""

    dataset: str
    source = programs.READ_PROPS

    def args(self) -> list[str]:
        return [self.dataset, *MOUNT_FLAG_PROPS]

    def parse(self, raw: Any) -> int:
        return mount_flags_of((raw or {}).get("props") or {})

    def ask(self, zfs: ZfsPort) -> int:
        return zfs.mount_flags(self.dataset)


def mount_flags_of(props: Any) -> int:
    """The mount(2) flags the properties ``setuid``, ``devices``, ``exec`` and ``readonly``
    ask for, as ``zfs mount`` derives them."""
    flags = 0
    for prop, (value, flag) in MOUNT_FLAG_PROPS.items():
        if programs.on_off(props.get(prop)) == value:
            flags |= flag
    return flags


def together_args(reads: Sequence[Read]) -> list[str]:
    """The arguments of ``programs.together``: each read's, after their count."""
    args: list[str] = []
    for read in reads:
        own = read.args()
        args += [str(len(own)), *own]
    return args
