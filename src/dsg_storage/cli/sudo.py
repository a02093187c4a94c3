"""What changes when the CLI runs through sudo (``SUDO_UID`` set).

Deciding only: ``Invocation.from_environment`` says who invoked us and under which
policy; the command code in ``commands`` asks it (an ``invocation.Caller``) before acting.
Without ``SUDO_UID`` it returns ``invocation.Direct()`` instead, the other variant: no
policy, and flags and ``DSG_STORAGE_*`` variables steer the CLI, because the caller is
root itself or a user without privileges of their own. This module imports
``invocation``, never the other way round (``context.invocation`` picks the variant).

Under sudo:
- the policy file (``/etc/dsg-storage/policy.toml``) is required for every command;
- ``DSG_STORAGE_*`` variables and ``TMPDIR``/``TMP``/``TEMP`` are dropped from the
  environment before anything reads them (locks, queue, cache, test hooks);
- files the command writes (``-o``, ``--cache``, ``metrics --textfile``) are created as
  the invoking user, beneath the policy's ``[output] under``, never through a link,
  never replacing a file without ``--force`` (the metrics textfile always is);
- the queue commands and metrics see only the items of datasets the policy allows;
- ``begin --property`` sets only the user properties ``[properties] allow`` names;
- files it reads (bundles, lock files) are opened as the invoking user.

Nothing here changes state; a crash leaves only what the command itself left.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable, Iterator, MutableMapping
from typing import TYPE_CHECKING

import attrs

from .. import hostfs
from ..core.options import Owner
from ..errors import InvalidArgumentError, NotAllowedError
from ..policy import DEFAULT_PATH, EXAMPLE, PolicyError, SudoPolicy
from ..settings import Settings
from ..zfs.allow import AllowList
from .invocation import Direct, Input

if TYPE_CHECKING:
    from .invocation import Caller

IGNORED_PREFIX = "DSG_STORAGE_"
IGNORED = ("TMPDIR", "TMP", "TEMP")


@attrs.frozen
class Invocation:
    """Run through sudo: ``invoker`` (the user behind sudo), their ``policy``, and the
    environment variables dropped (``ignored``)."""

    invoker: Owner
    policy: SudoPolicy
    ignored: tuple[str, ...] = ()
    sudo = True

    @classmethod
    def from_environment(
        cls, environ: MutableMapping[str, str], *, policy_path: str | None = None, settings: Settings | None = None
    ) -> Caller:
        """Who ran sudo (``settings.invoker``: ``SUDO_UID``/``SUDO_GID``, default read from
        ``environ``); under sudo, drop the variables that would steer us (from ``environ``
        itself, so nothing later reads them) and load the policy (``policy_path``, default
        ``DEFAULT_PATH``). Not under sudo: ``Direct``."""
        policy_path = policy_path or DEFAULT_PATH  # looked up now: the module's value at the call
        if settings is None:
            settings = Settings.for_cli(environ)
        invoker = settings.invoker
        if invoker is None:
            return Direct(settings.allow)
        ignored = tuple(sorted(k for k in environ if k.startswith(IGNORED_PREFIX) or k in IGNORED))
        for key in ignored:
            del environ[key]
        try:
            policy = SudoPolicy.load(policy_path, invoker=invoker)
        except FileNotFoundError:
            raise PolicyError(
                f"run through sudo (by uid {invoker.uid}), dsg-storage needs the policy file {policy_path}, "
                "saying which datasets, mountpoints, owners and output directories the caller may use; "
                f"nothing was done. As root, write it (owned by root, mode 0644), for example: {EXAMPLE!r}",
                hint="see 'Granting dsg-storage to a sync user' in the README",
            ) from None
        return cls(invoker, policy, ignored)

    @property
    def signatures_required(self) -> bool:
        """The policy's ``[bundles] require_signed``: bundles and lock files must be signed."""
        return self.policy.require_signed_bundles

    def allow(self, caller: AllowList) -> AllowList:
        """The policy's allow-list, narrowed by ``--allow`` (``$DSG_STORAGE_ALLOW`` was dropped)."""
        return self.policy.narrowed(caller).allow_list()

    def check_dataset(self, name: str | None) -> None:
        if name:
            self.policy.check_dataset(name)

    def mountpoint(self, path: str | None) -> str | None:
        """``path`` as ``SudoPolicy.check_place`` accepts it: beneath the policy's directories,
        its parent existing and root's all the way up, with no link."""
        return None if path is None else self.policy.check_place(path)

    def owner(self, owner: str | None, *, creating: bool) -> str | None:
        """The owner to give (default, when creating: the invoking user), checked."""
        if owner is None:
            return str(self.invoker) if creating else None
        return str(self.policy.check_owner(owner))

    def properties(self, props: dict[str, str]) -> dict[str, str]:
        """``props`` (``begin --property``) if the policy's ``[properties] allow`` names each."""
        self.policy.check_properties(props)
        return props

    def output(self, path: str, *, force: bool) -> hostfs.OutputFile:
        """The file to write for ``-o``: checked against ``[output] under``, written as
        the invoking user, replacing a file only with ``force``."""
        full = self.policy.check_output(path)
        return hostfs.OutputFile(full, replace=force, owner=(self.invoker.uid, self.invoker.gid))

    def cache_path(self, path: str | None) -> str | None:
        return None if path is None else self.policy.check_output(path)

    @property
    def cache_owner(self) -> tuple[int, int] | None:
        return (self.invoker.uid, self.invoker.gid)

    def _open_as_invoker(self, path: str) -> int:
        """``path`` opened read-only as the invoking user (never a FIFO or device)."""
        try:
            with hostfs.as_user(self.invoker.uid, self.invoker.gid):
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
        except FileNotFoundError:
            raise
        except PermissionError:
            raise NotAllowedError(f"{path}: the invoking user (uid {self.invoker.uid}) may not read it") from None
        except OSError as exc:
            raise InvalidArgumentError(f"{path}: {exc.strerror}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO or device would block or worse
            os.close(fd)
            raise InvalidArgumentError(f"{path} is not a regular file")
        return fd

    @contextlib.contextmanager
    def input(
        self, path: str, *, private: bool = False, check: Callable[[str], object] | None = None
    ) -> Iterator[Input]:
        """The file ``path`` to read, opened as the invoking user, so root reads only what
        they could: ``Input.path`` is ``/proc/self/fd/N``, which reopens that inode
        whatever the name points to later; ``Input.source`` says how the caller named it,
        its ``PATH.sig`` (opened as the caller too) and its identity.

        ``private`` (a bundle to import): a file that is not root's is read from root's
        own copy (``hostfs.private_copy``), since its owner could change it while root
        imports it. Before a byte is copied, ``check`` (the bundle's header and metadata)
        runs on the caller's own descriptor, and the copy is bounded by the policy's
        ``[bundles] max_size``, sparse files are refused, free space is kept."""
        from ..transfer.importing import Source

        fd = self._open_as_invoker(path)
        try:
            sig: int | None = self._open_as_invoker(f"{path}.sig")
        except FileNotFoundError:
            sig = None  # unsigned
        except BaseException:
            os.close(fd)
            raise
        try:
            st = os.fstat(fd)
            source = Source(path, sig, {"device": st.st_dev, "inode": st.st_ino, "size": st.st_size})
            if private and st.st_uid != 0:
                if check is not None:
                    check(f"/proc/self/fd/{fd}")
                with hostfs.private_copy(fd, max_size=self.policy.max_bundle_size) as copy:
                    yield Input(f"/proc/self/fd/{copy}", source)
            else:
                yield Input(f"/proc/self/fd/{fd}", source)
        finally:
            os.close(fd)
            if sig is not None:
                os.close(sig)

    def signers(self, given: str | None) -> str | None:
        """The allowed-signers file: only the policy's (``SudoPolicy.signers_file``)."""
        return self.policy.signers_file(given)

    def refuse(self, what: str) -> None:
        raise NotAllowedError(f"{what} is not available through sudo")
