"""What every command's handler is given: one ``Context``.

The parsed arguments, the allow-list (``--allow`` with ``$DSG_STORAGE_ALLOW``, or the
sudo policy's narrowed by it), the caller (``invocation``: ``invocation.Direct`` or
``sudo.Invocation``, both an ``invocation.Caller``), the settings read once from the
environment (``settings.Settings``), the factory that opens the ZFS boundary, and where
output goes. ``commands.main`` builds it; a test builds it with the in-memory pool as the
boundary (``main(argv, zfs=...)``).

Start-up cost: a dataclass, and nothing heavier than the allow-list imported here; the
core, the boundary and the queue are imported by the methods that open them.
"""

from __future__ import annotations

import dataclasses

TYPE_CHECKING = False  # not typing's: see dsg_storage/__init__.py
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, MutableMapping
    from typing import Any, TextIO

    from ..core.repository import Repository
    from ..queue import Queue
    from ..settings import Settings
    from ..zfs.allow import AllowList
    from ..zfs.port import ZfsPort
    from .invocation import Caller

    Boundary = Callable[[AllowList], ZfsPort]


def invocation(environ: MutableMapping[str, str], settings: Settings | None = None) -> Caller:
    """Who runs the command: ``sudo.Invocation.from_environment`` when run through sudo
    (``settings.sudo``), else ``invocation.Direct`` with the environment's allow-list.
    ``settings``: what ``environ`` says (default: read from it, ``Settings.for_cli``).
    The policy's machinery (``sudo``) is imported only under sudo."""
    if settings is None:
        from ..settings import Settings

        settings = Settings.for_cli(environ)
    if not settings.sudo:
        from .invocation import Direct

        return Direct(settings.allow)
    from .sudo import Invocation

    return Invocation.from_environment(environ, settings=settings)


def open_boundary(allow: AllowList) -> ZfsPort:
    """The real boundary (``zfs.boundary.open_zfs``): the default factory."""
    from ..zfs.boundary import open_zfs

    return open_zfs(allow)


def open_lister(allow: AllowList) -> ZfsPort:
    """The real boundary listing by ``zfs`` commands (``zfs.listing``): what a read-only
    command opens, so that its lists never load libzfs_core."""
    from ..zfs.boundary import open_zfs

    return open_zfs(allow, listing="commands")


@dataclasses.dataclass(frozen=True, slots=True)
class Context:
    args: argparse.Namespace
    allow: AllowList
    caller: Caller
    settings: Settings
    #: Opens the ZFS boundary for an allow-list (``open_boundary``, or a test's fake pool).
    boundary: Boundary
    stdout: TextIO
    stderr: TextIO
    #: Opens the boundary a read-only command lists through (``open_lister``); None: ``boundary``.
    lister: Boundary | None = None

    def zfs(self, allow: AllowList | None = None) -> ZfsPort:
        """The boundary, confined to ``allow`` (default: the command's allow-list)."""
        return self.boundary(self.allow if allow is None else allow)

    def lists(self, allow: AllowList | None = None) -> ZfsPort:
        """The boundary for a command that only reads one repository or a few datasets
        (``status``, ``history``, ``snapshot-ok``): its lists by ``zfs`` commands, confined
        to ``allow`` (default: the command's allow-list)."""
        return (self.lister or self.boundary)(self.allow if allow is None else allow)

    def repository(self, name: str, *, reads_only: bool = False) -> Repository:
        """``name`` as a Repository under the command's allow-list, policy and settings;
        ``reads_only``: for a command that will only read it (``prune --dry-run``), on the
        boundary that lists by ``zfs`` commands (``lists``)."""
        from .. import names
        from ..core.repository import Repository

        name = names.validate_repository(name)  # a bad name is exit 2 before the boundary opens
        primary = bool(getattr(self.args, "primary", False))
        zfs = self.lists() if reads_only else self.zfs()
        return Repository(name, zfs=zfs, policy=self.caller.policy, settings=self.settings, primary=primary)

    def queue(self) -> Queue:
        """The queue the settings name (``$DSG_STORAGE_QUEUE``, else its default)."""
        from ..queue import Queue

        return Queue(settings=self.settings)

    def emit(self, data: Any, text: str) -> None:
        """The command's result: ``data`` as one line of JSON with ``--json``, else ``text``."""
        if self.args.json:
            import json

            print(json.dumps(data, indent=None, sort_keys=True), file=self.stdout)
        else:
            print(text, file=self.stdout)

    def note(self, line: str) -> None:
        """A line on stderr (already escaped where it shows others' text)."""
        print(line, file=self.stderr)
