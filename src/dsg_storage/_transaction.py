"""Transactions on a repository (one ZFS dataset): the init and sync patterns.

*init* (the dataset does not exist): ``begin`` creates ``REPO.dsg-init-TX`` mounted at a
temporary path; ``commit`` renames it to ``REPO``, mounts it at the repository's
mountpoint and takes the first commit snapshot.

*sync* (the dataset exists): ``begin`` snapshots ``REPO@dsg-base-TX`` and clones it as the
workspace ``REPO.dsg-ws-TX``; ``commit`` promotes the workspace, swaps the names, mounts
the new head at the mountpoint, takes a commit snapshot and destroys the old head and the
base snapshot.

Everything a transaction needs is recorded as user properties on its temporary dataset,
so a transaction begun by one process can be committed or rolled back by another.
"""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

import attrs

from . import _names
from ._allow import AllowList
from ._errors import (
    DatasetExistsError,
    DatasetNotFoundError,
    InvalidArgumentError,
    RepositoryNotFoundError,
    TransactionNotFoundError,
    TransactionStateError,
)
from ._names import prop
from ._options import Owner, check_mountpoint, parse_mode
from ._zfs import Zfs, zfs_mounts

log = logging.getLogger("dsg_storage")

P_TX, P_PATTERN, P_REPO = prop("tx"), prop("pattern"), prop("repository")
P_MOUNTPOINT, P_OWNER, P_MODE = prop("mountpoint"), prop("owner"), prop("mode")
P_PATH, P_BEGUN = prop("path"), prop("begun")
P_COMMITTED, P_MESSAGE = prop("committed"), prop("message")
DEFAULT_MODE = 0o755


class Pattern(enum.StrEnum):
    INIT = "init"
    SYNC = "sync"


class State(enum.StrEnum):
    OPEN = "open"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled-back"


@attrs.frozen
class Commit:
    """One commit of a repository, as recorded on its commit snapshot."""

    snapshot: str
    tx: str
    committed: str  # ISO 8601, UTC
    message: str | None
    guid: int
    createtxg: int

    @property
    def name(self) -> str:
        return self.snapshot.split("@", 1)[1]


@attrs.frozen
class PendingTransaction:
    tx: str
    pattern: Pattern
    dataset: str
    path: str
    begun: str | None


@attrs.frozen
class RepositoryStatus:
    repository: str
    exists: bool
    mountpoint: str | None
    mounted_at: tuple[str, ...]
    owner: str | None
    mode: str | None
    last_commit: Commit | None
    pending: tuple[PendingTransaction, ...]


def _now() -> datetime:
    return datetime.now(UTC)


def _apply_owner(path: str, owner: Owner, mode: int) -> None:
    os.chown(path, owner.uid, owner.gid)
    os.chmod(path, mode)


def _remove_mount_dir(path: str) -> None:
    """Remove the empty directory a workspace was mounted on; keep anything non-empty."""
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("left %s in place: %s", path, exc.strerror)


class Repository:
    """A repository: one ZFS dataset, mounted at a path its user owns.

    ``allow`` (an AllowList, or a comma-separated string) confines every change; by
    default it comes from ``DSG_STORAGE_ALLOW`` and allows nothing when that is unset.
    """

    def __init__(self, name: str, *, allow: AllowList | str | None = None, zfs: Zfs | None = None) -> None:
        self.name = _names.validate_repository(name)
        if zfs is None:
            allow_list = (
                allow if isinstance(allow, AllowList) else AllowList.parse(allow) if allow else AllowList.from_env()
            )
            zfs = Zfs(allow_list)
        self.zfs = zfs

    def __repr__(self) -> str:
        return f"Repository({self.name!r})"

    # ------------------------------------------------------------------ reads
    def exists(self) -> bool:
        return self.zfs.exists(self.name)

    def history(self) -> list[Commit]:
        """Commits, oldest first. Raises RepositoryNotFoundError if the dataset is missing."""
        if not self.exists():
            raise RepositoryNotFoundError(f"repository {self.name} does not exist", dataset=self.name)
        commits = []
        for snap in self.zfs.snapshots(self.name):
            if not _names.is_commit_snapshot(snap.short_name):
                continue
            props = snap.user_props
            commits.append(
                Commit(
                    snapshot=snap.name,
                    tx=props.get(P_TX, ""),
                    committed=props.get(P_COMMITTED, ""),
                    message=props.get(P_MESSAGE) or None,
                    guid=snap.guid,
                    createtxg=snap.createtxg,
                )
            )
        return commits

    def pending(self) -> list[PendingTransaction]:
        """Open transactions (their temporary datasets exist), oldest first."""
        parent = self.name.rsplit("/", 1)[0]
        found = []
        for child in self.zfs.children(parent):
            parsed = _names.parse_temporary(child)
            if parsed is None or parsed[0] != self.name or parsed[1] == "old":
                continue
            props = self.zfs.user_props(child)
            found.append(
                PendingTransaction(
                    tx=parsed[2],
                    pattern=Pattern.INIT if parsed[1] == "init" else Pattern.SYNC,
                    dataset=child,
                    path=props.get(P_PATH, ""),
                    begun=props.get(P_BEGUN),
                )
            )
        return sorted(found, key=lambda p: p.tx)

    def status(self) -> RepositoryStatus:
        props = self.zfs.get_props(self.name, ["mountpoint", P_OWNER, P_MODE])
        history = self.history() if props is not None else []
        return RepositoryStatus(
            repository=self.name,
            exists=props is not None,
            mountpoint=(props or {}).get("mountpoint"),
            mounted_at=tuple(zfs_mounts().get(self.name, [])),
            owner=(props or {}).get(P_OWNER),
            mode=(props or {}).get(P_MODE),
            last_commit=history[-1] if history else None,
            pending=tuple(self.pending()),
        )

    # ------------------------------------------------------------------ transactions
    def begin(
        self,
        *,
        mountpoint: str | None = None,
        owner: Owner | str | tuple[int, int] | None = None,
        mode: str | int | None = None,
    ) -> Transaction:
        """Open a transaction; the pattern is *init* if the dataset is missing, else *sync*.

        The caller changes files under ``tx.path`` and then commits or rolls back.
        ``mountpoint`` is required for init; for sync it defaults to the repository's
        and, if different, moves the repository there at commit. ``owner``/``mode`` default
        to what init recorded (init: the current user, 0755) and are applied to the root
        of the workspace now and of the repository at commit.

        After a crash during begin, the repository itself is untouched; the temporary
        dataset, if it was created, is listed by ``status`` and removed by ``rollback``.
        """
        if mountpoint is not None:
            mountpoint = check_mountpoint(mountpoint)
        owner_v = Owner.parse(owner) if owner is not None else None
        mode_v = parse_mode(mode) if mode is not None else None
        tx = _names.new_tx_id()
        # Fail before any change if a temporary dataset would be outside the allow-list.
        for name in (self.name, _names.workspace_dataset(self.name, tx)):
            self.zfs.allow.check(name)
        current = self.zfs.get_props(self.name, ["mountpoint", P_OWNER, P_MODE])
        if current is None:
            return self._begin_init(tx, mountpoint, owner_v, mode_v)
        return self._begin_sync(tx, current, mountpoint, owner_v, mode_v)

    def _begin_init(self, tx: str, mountpoint: str | None, owner: Owner | None, mode: int | None) -> Transaction:
        if mountpoint is None:
            raise InvalidArgumentError(
                f"repository {self.name} does not exist yet: begin needs a mountpoint to create it",
                dataset=self.name,
            )
        parent = self.name.rsplit("/", 1)[0]
        if not self.zfs.exists(parent):
            raise DatasetNotFoundError(f"parent dataset {parent} of {self.name} does not exist", dataset=parent)
        owner = owner or Owner.current()
        mode = DEFAULT_MODE if mode is None else mode
        dataset = _names.init_dataset(self.name, tx)
        path = _names.workspace_mount_path(mountpoint, tx)
        self.zfs.create(dataset, self._tx_props(tx, Pattern.INIT, path, mountpoint, owner, mode))
        tx_obj = Transaction(self, tx, Pattern.INIT, dataset, path, mountpoint, owner, mode)
        tx_obj._mount_workspace()
        return tx_obj

    def _begin_sync(
        self, tx: str, current: Mapping[str, Any], mountpoint: str | None, owner: Owner | None, mode: int | None
    ) -> Transaction:
        repo_mountpoint = current.get("mountpoint")
        if mountpoint is None:
            if not repo_mountpoint or not str(repo_mountpoint).startswith("/"):
                raise InvalidArgumentError(
                    f"repository {self.name} has mountpoint {repo_mountpoint!r}: give --mountpoint",
                    dataset=self.name,
                )
            mountpoint = str(repo_mountpoint)
        owner = owner or (Owner.parse(current[P_OWNER]) if P_OWNER in current else Owner.current())
        mode = mode if mode is not None else parse_mode(current.get(P_MODE, DEFAULT_MODE))
        base = _names.base_snapshot(self.name, tx)
        dataset = _names.workspace_dataset(self.name, tx)
        path = _names.workspace_mount_path(mountpoint, tx)
        self.zfs.snapshot([base], {P_TX: tx})
        try:
            self.zfs.clone(dataset, base, self._tx_props(tx, Pattern.SYNC, path, mountpoint, owner, mode))
        except Exception:
            self.zfs.destroy_snapshots([base])
            raise
        tx_obj = Transaction(self, tx, Pattern.SYNC, dataset, path, mountpoint, owner, mode)
        tx_obj._mount_workspace()
        return tx_obj

    def _tx_props(
        self, tx: str, pattern: Pattern, path: str, mountpoint: str, owner: Owner, mode: int
    ) -> dict[str, str | int]:
        return {
            "mountpoint": path,
            P_TX: tx,
            P_PATTERN: pattern.value,
            P_REPO: self.name,
            P_PATH: path,
            P_MOUNTPOINT: mountpoint,
            P_OWNER: str(owner),
            P_MODE: f"{mode:04o}",
            P_BEGUN: _now().isoformat(timespec="seconds"),
        }

    def transaction(self, tx: str) -> Transaction:
        """The open transaction ``tx`` (possibly begun by another process)."""
        _names.validate_tx_id(tx)
        for pattern, dataset in (
            (Pattern.INIT, _names.init_dataset(self.name, tx)),
            (Pattern.SYNC, _names.workspace_dataset(self.name, tx)),
        ):
            props = self.zfs.get_props(dataset, [P_PATH, P_MOUNTPOINT, P_OWNER, P_MODE])
            if props is not None:
                return Transaction(
                    self,
                    tx,
                    pattern,
                    dataset,
                    props[P_PATH],
                    props[P_MOUNTPOINT],
                    Owner.parse(props[P_OWNER]),
                    parse_mode(props[P_MODE]),
                )
        raise TransactionNotFoundError(
            f"no open transaction {tx} on repository {self.name}",
            dataset=self.name,
            hint=f"'dsg-storage status {self.name}' lists the open ones",
        )

    def commit(self, tx: str, message: str | None = None) -> Commit:
        return self.transaction(tx).commit(message)

    def rollback(self, tx: str) -> None:
        self.transaction(tx).rollback()


class Transaction:
    """An open transaction; use it as a context manager to commit or roll back.

    ``path`` is where the caller changes files; ``pattern`` is init or sync.
    """

    def __init__(
        self,
        repository: Repository,
        tx: str,
        pattern: Pattern,
        dataset: str,
        path: str,
        mountpoint: str,
        owner: Owner,
        mode: int,
    ) -> None:
        self.repository = repository
        self.id = tx
        self.pattern = pattern
        self.dataset = dataset
        self.path = path
        self.mountpoint = mountpoint
        self.owner = owner
        self.mode = mode
        self.state = State.OPEN
        self._zfs = repository.zfs

    def __repr__(self) -> str:
        return f"Transaction({self.repository.name!r}, {self.id!r}, {self.pattern.value}, {self.state.value})"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.state is not State.OPEN:
            return
        if exc_type is None:
            self.commit()
        else:
            self.rollback()

    def _mount_workspace(self) -> None:
        self._zfs.mount(self.dataset, self.path)
        _apply_owner(self.path, self.owner, self.mode)

    def _require_open(self) -> None:
        if self.state is not State.OPEN:
            raise TransactionStateError(f"transaction {self.id} is already {self.state.value}", dataset=self.dataset)

    # ------------------------------------------------------------------ commit
    def commit(self, message: str | None = None) -> Commit:
        """Make the workspace the repository and record a commit snapshot.

        Afterwards the repository's dataset holds the workspace's files, is mounted at its
        mountpoint (the ``mountpoint`` property, so it stays right after a reboot) and is
        owned as recorded; the temporary datasets and snapshots are gone.
        """
        self._require_open()
        repo = self.repository.name
        self._zfs.unmount(self.dataset)
        if self.pattern is Pattern.INIT:
            if self._zfs.exists(repo):
                raise DatasetExistsError(
                    f"repository {repo} was created by someone else since this init transaction began",
                    dataset=repo,
                    hint=f"roll back with 'dsg-storage rollback {repo} {self.id}'",
                )
            self._zfs.rename(self.dataset, repo)
            old = None
        else:
            old = _names.old_dataset(repo, self.id)
            self._zfs.unmount(repo)
            self._zfs.promote(self.dataset)
            self._zfs.rename(repo, old)
            self._zfs.rename(self.dataset, repo)
        self._zfs.set_mountpoint(repo, self.mountpoint)  # also mounts it
        self._zfs.mount(repo, self.mountpoint)  # no-op when zfs set mounted it
        _apply_owner(self.mountpoint, self.owner, self.mode)
        when = _now()
        snapshot = _names.commit_snapshot(repo, when)
        props = {P_TX: self.id, P_COMMITTED: when.isoformat(timespec="milliseconds")}
        if message:
            props[P_MESSAGE] = message
        self._zfs.snapshot([snapshot], props)
        if old is not None:
            self._zfs.destroy(old)
            self._zfs.destroy_snapshots([_names.base_snapshot(repo, self.id)])
        _remove_mount_dir(self.path)
        self.state = State.COMMITTED
        snap = self._zfs.snapshots(repo)[-1]
        return Commit(
            snapshot=snapshot,
            tx=self.id,
            committed=props[P_COMMITTED],
            message=message or None,
            guid=snap.guid,
            createtxg=snap.createtxg,
        )

    # ------------------------------------------------------------------ rollback
    def rollback(self) -> None:
        """Throw the workspace away; the repository is left exactly as it was."""
        self._require_open()
        self._zfs.destroy(self.dataset)  # unmounts first
        if self.pattern is Pattern.SYNC:
            self._zfs.destroy_snapshots([_names.base_snapshot(self.repository.name, self.id)])
        _remove_mount_dir(self.path)
        self.state = State.ROLLED_BACK


def begin(
    repository: str,
    *,
    mountpoint: str | None = None,
    owner: Owner | str | tuple[int, int] | None = None,
    mode: str | int | None = None,
    allow: AllowList | str | None = None,
) -> Transaction:
    """Shorthand for ``Repository(repository, allow=allow).begin(...)``."""
    return Repository(repository, allow=allow).begin(mountpoint=mountpoint, owner=owner, mode=mode)


__all__ = [
    "Commit",
    "Pattern",
    "PendingTransaction",
    "Repository",
    "RepositoryStatus",
    "State",
    "Transaction",
    "begin",
]
