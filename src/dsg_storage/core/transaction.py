"""Transactions on a repository (one ZFS dataset): init and sync, crash-safe.

*init* (the dataset does not exist): begin creates ``REPO.dsg-init-TX`` mounted at a
temporary path; commit renames it to ``REPO``, mounts it and takes the first commit
snapshot.

*sync* (the dataset exists): begin snapshots ``REPO@dsg-base-TX`` and clones it as the
workspace ``REPO.dsg-ws-TX``; commit promotes the workspace, swaps the names, mounts the
new head, takes a commit snapshot and destroys the old head and the base snapshot.

Durability. Everything a transaction needs is recorded in the pool as user properties
(``dsg-storage:*``) on its temporary dataset, so any process on any host that imports the
pool can see it, commit it, roll it back or recover it. Its ``state`` moves
``beginning -> open -> aborting`` (rollback) or, with the dataset renamed to the
repository's name, ``-> committed``. Each change is written in the same ZFS sync task as
the step it guards (channel-program batches, see ``_zfs.Batch``):

* The **commit point** is the rename that gives the repository's name to the new content
  (for sync, after the old head was renamed away and found unchanged since begin). A
  commit interrupted after it is finished by recovery; one interrupted between the two
  renames is finished too, or undone if the repository had changed since begin; one
  interrupted earlier changed nothing.
* ``beginning`` and ``aborting`` mark steps that recovery undoes: an interrupted begin or
  rollback is rolled back.
* ``open`` transactions are never ended by recovery (their caller may still be working);
  ``status`` lists them and ``abort``/``rollback`` ends them.

Steps run under a per-repository lock (``_lock``), so recovery never races a live step.
"""

from __future__ import annotations

import enum
import logging
import os
import signal
import sqlite3
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

import attrs

from ..errors import (
    ConflictError,
    DatasetExistsError,
    DatasetNotFoundError,
    InvalidArgumentError,
    InvalidNameError,
    PoolUnavailableError,
    RepositoryNotFoundError,
    TransactionInProgressError,
    TransactionNotFoundError,
    TransactionStateError,
)
from ..queue import Queue
from ..zfs.boundary import Batch, Snapshot, Zfs, zfs_mounts
from . import names as _names
from .allow import AllowList
from .lock import repository_lock
from .names import prop
from .options import Owner, check_mountpoint, parse_mode

log = logging.getLogger("dsg_storage")

P_TX, P_PATTERN, P_REPO = prop("tx"), prop("pattern"), prop("repository")
P_MOUNTPOINT, P_OWNER, P_MODE = prop("mountpoint"), prop("owner"), prop("mode")
P_PATH, P_BEGUN, P_INHERITS = prop("path"), prop("begun"), prop("inherits-mountpoint")
P_COMMITTED, P_MESSAGE = prop("committed"), prop("message")
P_STATE, P_PENDING, P_COMMIT_SNAPSHOT = prop("state"), prop("pending"), prop("commit-snapshot")
P_IMPORT = prop("import")  # "TX BASE" on a repository while an incremental bundle lands (_bundle)
P_COMMIT_MESSAGE = prop("commit-message")  # on the workspace between commit point and commit snapshot
DEFAULT_MODE = 0o755
#: Test-only: ``op:k`` (op = begin, commit, rollback, recover) kills the process with
#: SIGKILL right after the k-th changing step of that operation.
CRASH_ENV = "DSG_STORAGE_CRASH_AT"


class Pattern(enum.StrEnum):
    INIT = "init"
    SYNC = "sync"


class State(enum.StrEnum):
    """Where a Transaction object stands in this process."""

    OPEN = "open"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled-back"


class Phase(enum.StrEnum):
    """A transaction's state as recorded in the pool (``dsg-storage:state``)."""

    BEGINNING = "beginning"
    OPEN = "open"
    ABORTING = "aborting"
    COMMITTED = "committed"


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


def commits_of(snapshots: Sequence[Snapshot]) -> list[Commit]:
    """The commit snapshots among ``snapshots`` (in their order), as Commits."""
    return [
        Commit(
            snapshot=snap.name,
            tx=snap.user_props.get(P_TX, ""),
            committed=snap.user_props.get(P_COMMITTED, ""),
            message=snap.user_props.get(P_MESSAGE) or None,
            guid=snap.guid,
            createtxg=snap.createtxg,
        )
        for snap in snapshots
        if _names.is_commit_snapshot(snap.short_name)
    ]


@attrs.frozen
class PendingTransaction:
    tx: str
    pattern: Pattern
    state: str
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
    leftovers: tuple[str, ...]  # retired datasets whose destruction is still due


@attrs.frozen
class _Record:
    """A transaction as its user properties record it; ``dataset`` is where they are now."""

    tx: str
    pattern: Pattern
    phase: Phase
    dataset: str
    path: str
    mountpoint: str
    owner: Owner
    mode: int
    inherits: bool
    message: str
    begun: str | None

    @classmethod
    def parse(cls, dataset: str, props: Mapping[str, str]) -> _Record:
        return cls(
            tx=props[P_TX],
            pattern=Pattern(props[P_PATTERN]),
            phase=Phase(props.get(P_STATE) or Phase.OPEN),
            dataset=dataset,
            path=props[P_PATH],
            mountpoint=props[P_MOUNTPOINT],
            owner=Owner.parse(props[P_OWNER]),
            mode=parse_mode(props[P_MODE]),
            inherits=props.get(P_INHERITS) == "yes",
            message=props.get(P_COMMIT_MESSAGE, ""),
            begun=props.get(P_BEGUN),
        )


class _Steps:
    """Counts the changing steps of one operation, for the test-only crash hook."""

    def __init__(self, op: str) -> None:
        self.op = op
        self.count = 0
        self.target = os.environ.get(CRASH_ENV)

    def done(self) -> None:
        self.count += 1
        if self.target == f"{self.op}:{self.count}":
            os.kill(os.getpid(), signal.SIGKILL)


def _now() -> datetime:
    return datetime.now(UTC)


def _apply_owner(path: str, owner: Owner, mode: int) -> None:
    """Give ``path`` its owner and mode; touch nothing that is already right (a needless
    chown would change the directory's ctime, which would look like a change to it)."""
    st = os.stat(path)
    if (st.st_uid, st.st_gid) != (owner.uid, owner.gid):
        os.chown(path, owner.uid, owner.gid)
    if st.st_mode & 0o7777 != mode:
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
    Every changing call first recovers interrupted steps (see ``recover``).
    """

    def __init__(
        self,
        name: str,
        *,
        allow: AllowList | str | None = None,
        zfs: Zfs | None = None,
        lock_timeout: float = 10.0,
        queue: Queue | None = None,
    ) -> None:
        self.name = _names.validate_repository(name)
        if zfs is None:
            allow_list = allow if isinstance(allow, AllowList) else AllowList.parse(allow) if allow else None
            zfs = Zfs(allow_list or AllowList.from_env())
        self.zfs = zfs
        self.lock_timeout = lock_timeout
        self._queue = queue

    def _defer(self, skipped: Mapping[str, int]) -> None:
        """Queue the destroys that could not run now (see ``_queue``). Recovery also
        retries them from the pool itself, so a queue that cannot be written loses nothing."""
        if not skipped:
            return
        left = ", ".join(f"{name} ({os.strerror(code)})" for name, code in skipped.items())
        try:
            queue = self._queue = self._queue or Queue()
            for name in sorted(skipped, key=lambda n: "@" in n):  # dependents (filesystems) first
                queue.add_destroy(name)
        except (OSError, sqlite3.Error) as exc:
            log.error("%s: cannot destroy %s yet, and cannot queue it (%s); recovery will retry", self.name, left, exc)
            return
        log.warning("%s: cannot destroy %s yet; queued ('dsg-storage queue list')", self.name, left)

    def __repr__(self) -> str:
        return f"Repository({self.name!r})"

    # ------------------------------------------------------------------ names
    def _ws(self, tx: str) -> str:
        return _names.workspace_dataset(self.name, tx)

    def _init(self, tx: str) -> str:
        return _names.init_dataset(self.name, tx)

    def _old(self, tx: str) -> str:
        return _names.old_dataset(self.name, tx)

    def _base(self, tx: str) -> str:
        return _names.base_snapshot(self.name, tx)

    def _lock(self) -> Any:
        return repository_lock(self.name, timeout=self.lock_timeout, sleep=self.zfs.sleep)

    # ------------------------------------------------------------------ reads
    def exists(self) -> bool:
        return self.zfs.exists(self.name)

    def history(self) -> list[Commit]:
        """Commits, oldest first. Raises RepositoryNotFoundError if the dataset is missing."""
        if not self.exists():
            raise RepositoryNotFoundError(f"repository {self.name} does not exist", dataset=self.name)
        return commits_of(self.zfs.snapshots(self.name))

    def _records(self, family: Mapping[str, Mapping[str, str]]) -> list[_Record]:
        """Transactions whose temporary dataset (init or workspace) exists, oldest first."""
        found = []
        for dataset, props in family.items():
            parsed = _names.parse_temporary(dataset)
            if parsed and parsed[1] in ("init", "ws") and P_TX in props:
                found.append(_Record.parse(dataset, props))
        return sorted(found, key=lambda r: r.tx)

    def pending(self) -> list[PendingTransaction]:
        """Transactions not finished yet (open, or interrupted and awaiting recovery)."""
        return self._pending(self.zfs.family(self.name))

    def _pending(self, family: Mapping[str, Mapping[str, str]]) -> list[PendingTransaction]:
        return [
            PendingTransaction(r.tx, r.pattern, r.phase.value, r.dataset, r.path, r.begun)
            for r in self._records(family)
        ]

    def status(self) -> RepositoryStatus:
        family = self.zfs.family(self.name)
        props = family.get(self.name)
        history = self.history() if props is not None else []
        return RepositoryStatus(
            repository=self.name,
            exists=props is not None,
            mountpoint=(props or {}).get("mountpoint"),
            mounted_at=tuple(zfs_mounts().get(self.name, [])),
            owner=(props or {}).get(P_OWNER),
            mode=(props or {}).get(P_MODE),
            last_commit=history[-1] if history else None,
            pending=tuple(self._pending(family)),
            leftovers=tuple(d for d in family if (_names.parse_temporary(d) or ("", "", ""))[1] == "old"),
        )

    def transaction(self, tx: str) -> Transaction:
        """The open transaction ``tx`` (possibly begun by another process)."""
        return Transaction(self, self._open_record(tx, self.zfs.family(self.name)))

    def _open_record(self, tx: str, family: Mapping[str, Mapping[str, str]]) -> _Record:
        _names.validate_tx_id(tx)
        for dataset in (self._init(tx), self._ws(tx)):
            if dataset in family:
                record = _Record.parse(dataset, family[dataset])
                if record.phase is not Phase.OPEN:
                    raise TransactionStateError(
                        f"transaction {tx} on {self.name} is {record.phase.value}, not open",
                        dataset=dataset,
                        hint=f"'dsg-storage recover {self.name}' finishes it",
                    )
                return record
        raise TransactionNotFoundError(
            f"no open transaction {tx} on repository {self.name}",
            dataset=self.name,
            hint=f"'dsg-storage status {self.name}' lists the open ones",
        )

    def snapshot(self, name: str, *, requested: datetime | None = None) -> None:
        """Take snapshot ``name`` (``REPO@short``) now, recording when it was requested.

        Raises PoolUnavailableError when the pool is not imported (``dsg-storage snapshot
        --queue`` then queues the request instead)."""
        if name.split("@", 1)[0] != self.name or not _names.valid_snapshot_short(name.split("@", 1)[-1]):
            raise InvalidNameError(f"{name!r} is not a snapshot name of {self.name} (REPO@name)")
        pool = _names.pool_of(self.name)
        if not self.zfs.exists(pool):
            raise PoolUnavailableError(f"pool {pool} is not imported", dataset=self.name)
        when = (requested or _now()).isoformat(timespec="seconds")
        self.zfs.snapshot([name], {prop("requested"): when})

    # ------------------------------------------------------------------ begin
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

        One writer per repository: raises TransactionInProgressError while another
        transaction is open. After a crash during begin, the next call on the repository
        (or ``recover``) removes what the interrupted begin created; the repository's
        content is never touched by begin.
        """
        if mountpoint is not None:
            mountpoint = check_mountpoint(mountpoint)
        owner_v = Owner.parse(owner) if owner is not None else None
        mode_v = parse_mode(mode) if mode is not None else None
        tx = _names.new_tx_id()
        # Fail before any change if a temporary dataset would be outside the allow-list.
        for name in (self.name, self._ws(tx)):
            self.zfs.allow.check(name)
        with self._lock():
            _, family = self._recover()
            for record in self._records(family):
                raise TransactionInProgressError(
                    f"repository {self.name} already has an open transaction {record.tx} "
                    f"(begun {record.begun or 'at an unknown time'}, workspace {record.path})",
                    dataset=self.name,
                    hint=f"commit it, or abort it with 'dsg-storage abort {self.name} {record.tx}'",
                )
            inherited = self._inherited_mountpoint(family)
            current = family.get(self.name)
            if current is None:
                return self._begin_init(tx, family, inherited, mountpoint, owner_v, mode_v)
            return self._begin_sync(tx, current, inherited, mountpoint, owner_v, mode_v)

    def _inherited_mountpoint(self, family: Mapping[str, Mapping[str, str]]) -> str | None:
        """The mountpoint the repository gets by inheritance from its parent, if any.

        When the user's mountpoint is that one, the temporary datasets carry no local
        mountpoint and simply inherit theirs (beside it), and the rename at commit moves
        the repository's mount into place with no property to set: no ``zfs`` command.
        """
        parent, leaf = self.name.rsplit("/", 1)
        base = (family.get(parent) or {}).get("mountpoint")
        if not isinstance(base, str) or not base.startswith("/"):
            return None  # none or legacy
        return f"{base.rstrip('/')}/{leaf}"

    @staticmethod
    def _workspace_path(dataset: str, mountpoint: str, tx: str, inherits: bool) -> str:
        if inherits:  # where the temporary dataset inherits its mount: beside the repository's
            return f"{mountpoint.rsplit('/', 1)[0]}/{dataset.rsplit('/', 1)[1]}"
        return _names.workspace_mount_path(mountpoint, tx)

    def _begin_init(
        self,
        tx: str,
        family: Mapping[str, Mapping[str, str]],
        inherited: str | None,
        mountpoint: str | None,
        owner: Owner | None,
        mode: int | None,
    ) -> Transaction:
        if mountpoint is None:
            raise InvalidArgumentError(
                f"repository {self.name} does not exist yet: begin needs a mountpoint to create it",
                dataset=self.name,
            )
        parent = self.name.rsplit("/", 1)[0]
        if parent not in family or not self.zfs.exists(parent):
            raise DatasetNotFoundError(f"parent dataset {parent} of {self.name} does not exist", dataset=parent)
        owner = owner or Owner.current()
        record = self._new_record(tx, Pattern.INIT, self._init(tx), mountpoint, inherited, owner, mode)
        steps = _Steps("begin")
        self.zfs.create(record.dataset, self._record_props(record))
        steps.done()
        return self._open_workspace(record, steps)

    def _begin_sync(
        self,
        tx: str,
        current: Mapping[str, Any],
        inherited: str | None,
        mountpoint: str | None,
        owner: Owner | None,
        mode: int | None,
    ) -> Transaction:
        if mountpoint is None:
            repo_mountpoint = current.get("mountpoint")
            if not isinstance(repo_mountpoint, str) or not repo_mountpoint.startswith("/"):
                raise InvalidArgumentError(
                    f"repository {self.name} has mountpoint {repo_mountpoint!r}: give a mountpoint",
                    dataset=self.name,
                )
            mountpoint = repo_mountpoint
        owner = owner or (Owner.parse(current[P_OWNER]) if P_OWNER in current else Owner.current())
        mode = mode if mode is not None else parse_mode(current.get(P_MODE, DEFAULT_MODE))
        record = self._new_record(tx, Pattern.SYNC, self._ws(tx), mountpoint, inherited, owner, mode)
        steps = _Steps("begin")
        # The pending mark on the repository, then the base snapshot, in one sync task:
        # recovery finds an interrupted begin from the mark alone.
        self.zfs.apply(Batch().set(self.name, {P_PENDING: tx}).snapshot(self._base(tx), {P_TX: tx}))
        steps.done()
        self.zfs.clone(record.dataset, self._base(tx), self._record_props(record))
        steps.done()
        return self._open_workspace(record, steps)

    def _new_record(
        self,
        tx: str,
        pattern: Pattern,
        dataset: str,
        mountpoint: str,
        inherited: str | None,
        owner: Owner,
        mode: int | None,
    ) -> _Record:
        inherits = mountpoint == inherited
        return _Record(
            tx=tx,
            pattern=pattern,
            phase=Phase.BEGINNING,
            dataset=dataset,
            path=self._workspace_path(dataset, mountpoint, tx, inherits),
            mountpoint=mountpoint,
            owner=owner,
            mode=DEFAULT_MODE if mode is None else mode,
            inherits=inherits,
            message="",
            begun=_now().isoformat(timespec="seconds"),
        )

    def _record_props(self, record: _Record) -> dict[str, str | int]:
        local_mountpoint: dict[str, str | int] = {} if record.inherits else {"mountpoint": record.path}
        return {
            **local_mountpoint,
            # atime off: reads must not count as changes in the conflict check at commit.
            "atime": 0,
            P_STATE: record.phase.value,
            P_INHERITS: "yes" if record.inherits else "no",
            P_TX: record.tx,
            P_PATTERN: record.pattern.value,
            P_REPO: self.name,
            P_PATH: record.path,
            P_MOUNTPOINT: record.mountpoint,
            P_OWNER: str(record.owner),
            P_MODE: f"{record.mode:04o}",
            P_BEGUN: record.begun or "",
        }

    def _open_workspace(self, record: _Record, steps: _Steps) -> Transaction:
        self.zfs.mount(record.dataset, record.path)
        _apply_owner(record.path, record.owner, record.mode)
        steps.done()
        # The last step: once the state says open, begin is over (no boundary after it).
        self.zfs.apply(Batch().set(record.dataset, {P_STATE: Phase.OPEN.value}))
        return Transaction(self, attrs.evolve(record, phase=Phase.OPEN))

    # ------------------------------------------------------------------ commit
    def commit(self, tx: str, message: str | None = None) -> Commit:
        """Commit transaction ``tx`` (see ``Transaction.commit``)."""
        with self._lock():
            _, family = self._recover()
            record = self._open_record(tx, family)
            steps = _Steps("commit")
            if message:  # durable before the commit point, so recovery can finish with it
                self.zfs.apply(Batch().set(record.dataset, {P_COMMIT_MESSAGE: message}))
                record = attrs.evolve(record, message=message)
            try:
                self.zfs.unmount(record.dataset)
                if record.pattern is Pattern.SYNC:
                    self.zfs.unmount(self.name)  # from here on nobody can change it unseen
                    self.zfs.rename(self.name, self._old(tx))
            except Exception:
                self._remount(record)  # nothing changed: put the mounts back
                raise
            if record.pattern is Pattern.SYNC:
                steps.done()
                self._require_unchanged(record)
            try:
                self.zfs.rename(record.dataset, self.name)  # the commit point
            except Exception as exc:
                self._undo_first_rename(record)
                if isinstance(exc, DatasetExistsError) and record.pattern is Pattern.INIT:
                    raise DatasetExistsError(
                        f"repository {self.name} was created by someone else since init transaction {tx} began",
                        dataset=self.name,
                        hint=f"nothing was changed; abort it with 'dsg-storage abort {self.name} {tx}'",
                    ) from exc
                raise
            steps.done()
            return self._finish(attrs.evolve(record, dataset=self.name), {}, steps)

    def _require_unchanged(self, record: _Record) -> None:
        """Between the two renames of a sync commit: refuse, undoing the first rename, if
        files of the repository changed after begin.

        The rename synced every earlier write, so ``written@base`` sees them all; zero
        (the usual case) settles it at once. Mounting a filesystem also writes a little
        metadata (after an import, or a remount by recovery), so a non-zero value is
        confirmed file by file with ``zfs diff`` before it counts as a change."""
        old, base = self._old(record.tx), self._base(record.tx).split("@", 1)[1]
        key = f"written@{base}"
        try:
            written = int((self.zfs.get_props(old, [key]) or {}).get(key, 0))
            changes = self.zfs.changed_files(f"{old}@{base}", old) if written else []
        except Exception:
            self._undo_first_rename(record)
            raise
        if changes:
            self._undo_first_rename(record)
            shown = ", ".join(changes[:3]) + (f" and {len(changes) - 3} more" if len(changes) > 3 else "")
            raise ConflictError(
                f"repository {self.name} was changed after transaction {record.tx} began ({shown}); "
                "committing would lose that change",
                dataset=self.name,
                hint=f"nothing was changed; roll back with 'dsg-storage rollback {self.name} {record.tx}'",
            )

    def _undo_first_rename(self, record: _Record) -> None:
        """Before the commit point: give the repository its name back (sync) and remount."""
        if record.pattern is Pattern.SYNC and not self.zfs.exists(self.name):
            self.zfs.rename(self._old(record.tx), self.name)
        self._remount(record)

    def _remount(self, record: _Record) -> None:
        """Put the repository and the open workspace back where they were."""
        if record.pattern is Pattern.SYNC:
            self._place_head()
        self.zfs.mount(record.dataset, record.path)

    def _finish(self, record: _Record, head: Mapping[str, str], steps: _Steps) -> Commit:
        """After the commit point (the repository's name holds the new content): mount it,
        take the commit snapshot, retire the old head. Idempotent."""
        retired = [self._old(record.tx), self._base(record.tx)] if record.pattern is Pattern.SYNC else []
        self._place(record.mountpoint, record.inherits, record.owner, record.mode, retired[:1])
        _remove_mount_dir(record.path)
        steps.done()
        # Every prefix of this batch is finished by recovery: the snapshot's name first,
        # the state last.
        snapshot = head.get(P_COMMIT_SNAPSHOT) or _names.commit_snapshot(self.name, _now())
        commit_props = {P_TX: record.tx, P_COMMITTED: _now().isoformat(timespec="milliseconds")}
        if record.message:
            commit_props[P_MESSAGE] = record.message
        batch = Batch().set(self.name, {P_COMMIT_SNAPSHOT: snapshot}).promote(self.name)
        if self.zfs.exists(snapshot):  # an interrupted earlier try made it
            batch.set(snapshot, commit_props)
        else:
            batch.snapshot(snapshot, commit_props)
        batch.set(self.name, {P_STATE: Phase.COMMITTED.value})
        for name in retired:
            batch.destroy(name, required=False)
        result = self.zfs.apply(batch)
        self._defer(result.skipped)
        steps.done()
        guid, createtxg = result.created.get(snapshot, (0, 0))
        return Commit(snapshot, record.tx, commit_props[P_COMMITTED], record.message or None, guid, createtxg)

    def _place(self, mountpoint: str, inherits: bool, owner: Owner, mode: int, others: list[str]) -> None:
        """Mount the repository at its mountpoint, alone, with its owner and mode."""
        mounts = zfs_mounts()
        for other in others:  # e.g. the old head, auto-mounted there by an import
            if mounts.get(other):
                self.zfs.unmount(other)
        for path in mounts.get(self.name, []):
            if path != mountpoint:  # e.g. still at the workspace path after an import
                self.zfs.unmount(self.name, path)
        if not inherits:
            props = self.zfs.get_props(self.name, ["mountpoint"]) or {}
            if props.get("mountpoint") != mountpoint:
                self.zfs.set_mountpoint(self.name, mountpoint)  # also mounts it
        self.zfs.mount(self.name, mountpoint)  # no-op when already mounted there
        _apply_owner(mountpoint, owner, mode)

    # ------------------------------------------------------------------ rollback
    def rollback(self, tx: str) -> None:
        """Roll back (abort) the open transaction ``tx``; the repository is left as it was."""
        with self._lock():
            _, family = self._recover()
            self._abort(self._open_record(tx, family), _Steps("rollback"))

    abort = rollback

    def _abort(self, record: _Record, steps: _Steps) -> None:
        """Undo a transaction that has not reached its commit point (idempotent)."""
        if record.phase is Phase.OPEN:
            self.zfs.apply(Batch().set(record.dataset, {P_STATE: Phase.ABORTING.value}))
            steps.done()
        if self.zfs.exists(record.dataset):
            # The directory goes while the dataset still records its path, so that an
            # interruption here leaves something for recovery to finish from.
            self.zfs.unmount(record.dataset)
            _remove_mount_dir(record.path)
            self.zfs.destroy(record.dataset)
            steps.done()
        _remove_mount_dir(record.path)
        if record.pattern is Pattern.SYNC and self.zfs.exists(self.name):
            batch = Batch().destroy(self._base(record.tx), required=False)
            self._defer(self.zfs.apply(batch.set(self.name, {P_PENDING: ""})).skipped)
            steps.done()

    # ------------------------------------------------------------------ recovery
    def recover(self) -> list[str]:
        """Finish every interrupted step on this repository; return what was done.

        A commit interrupted after its commit point is finished; one interrupted between
        its two renames is finished too, unless the repository had changed since begin
        (then the first rename is undone and the transaction stays open); an interrupted
        begin or rollback is undone; open transactions are left open (remounted if
        needed); an interrupted bundle import is undone (its ``.dsg-recv-`` dataset
        destroyed, or the repository rolled back to the import's base); retired datasets
        are destroyed when they can be; the repository is mounted at its mountpoint with
        its owner and mode. Idempotent, and safe to run from
        several processes at once (they take turns). Runs automatically at the start of
        begin, commit and rollback.
        """
        with self._lock():
            return self._recover()[0]

    def _recover(self) -> tuple[list[str], dict[str, dict[str, str]]]:
        """Recover; return what was done and the family as it is afterwards."""
        actions: list[str] = []
        steps = _Steps("recover")
        family = self.zfs.family(self.name)
        head = family.get(self.name)
        tx_on_head = (head or {}).get(P_TX)
        if tx_on_head and head and head.get(P_STATE) != Phase.COMMITTED:
            # The new content has the repository's name: the commit point was passed.
            record = _Record.parse(self.name, head)
            self._finish(record, head, steps)
            actions.append(f"{record.tx}: commit finished")
        actions += self._recover_imports(family)
        for record in self._records(family):
            if record.phase in (Phase.BEGINNING, Phase.ABORTING):
                self._abort(record, steps)
                what = "begin" if record.phase is Phase.BEGINNING else "rollback"
                actions.append(f"{record.tx}: interrupted {what} undone")
            elif head is None and self._old(record.tx) in family:
                actions.append(self._resume_between_renames(record, steps))
            elif record.path not in zfs_mounts().get(record.dataset, []):
                if record.pattern is Pattern.SYNC:
                    self._place_head(family)
                self.zfs.mount(record.dataset, record.path)
                _apply_owner(record.path, record.owner, record.mode)
                actions.append(f"{record.tx}: open workspace remounted at {record.path}")
        if actions:
            family = self.zfs.family(self.name)
        actions += self._clean_leftovers(family)
        head = family.get(self.name)
        if head is not None and head.get(P_STATE) in (None, Phase.COMMITTED) and self._place_head(family):
            actions.append(f"remounted {self.name} at {head.get(P_MOUNTPOINT) or head.get('mountpoint')}")
        for action in actions:
            log.info("recover %s: %s", self.name, action)
        return actions, family

    def _recover_imports(self, family: Mapping[str, Mapping[str, str]]) -> list[str]:
        """Undo bundle imports a crash interrupted (see ``_bundle``): a full one left only
        its ``.dsg-recv-`` dataset; an incremental one left its mark on the repository."""
        actions = []
        for dataset in family:
            parsed = _names.parse_temporary(dataset)
            if parsed and parsed[1] == "recv":
                self.zfs.destroy_with_snapshots(dataset)
                actions.append(f"{parsed[2]}: interrupted bundle import {dataset} destroyed")
        mark = (family.get(self.name) or {}).get(P_IMPORT)
        if mark:
            from ..transfer.bundle import undo_import

            tx, base = mark.split(" ", 1)
            undo_import(self.zfs, self.name, base)
            actions.append(f"{tx}: interrupted bundle import undone (back to {base})")
        return actions

    def _resume_between_renames(self, record: _Record, steps: _Steps) -> str:
        """A sync commit stopped after renaming the repository away: finish it, or undo the
        rename if the repository had been changed since begin (a conflict)."""
        try:
            self._require_unchanged(record)
        except ConflictError:
            return f"{record.tx}: commit not finished (repository changed since begin); transaction left open"
        self.zfs.unmount(record.dataset)
        self.zfs.rename(record.dataset, self.name)
        steps.done()
        self._finish(attrs.evolve(record, dataset=self.name), {}, steps)
        return f"{record.tx}: commit finished"

    def _place_head(self, family: Mapping[str, Mapping[str, str]] | None = None) -> bool:
        """Mount the (committed) repository at its mountpoint if it is not; True if it was not."""
        family = family if family is not None else self.zfs.family(self.name)
        head = family.get(self.name) or {}
        mountpoint = head.get(P_MOUNTPOINT) or head.get("mountpoint", "")
        if P_OWNER not in head or not mountpoint.startswith("/"):
            return False  # not created by dsg-storage: leave its mounts to its owner
        if mountpoint in zfs_mounts().get(self.name, []):
            return False
        olds = [d for d in family if d.startswith(self.name + ".dsg-old-")]
        owner, mode = Owner.parse(head[P_OWNER]), parse_mode(head[P_MODE])
        self._place(mountpoint, head.get(P_INHERITS) == "yes", owner, mode, olds)
        return True

    def _clean_leftovers(self, family: Mapping[str, Mapping[str, str]]) -> list[str]:
        actions = []
        head = family.get(self.name)
        pending = (head or {}).get(P_PENDING)
        if pending and self._ws(pending) not in family:
            # A begin that died between its base snapshot and its clone, or a rollback
            # that died after destroying the workspace.
            batch = Batch().destroy(self._base(pending), required=False).set(self.name, {P_PENDING: ""})
            self.zfs.apply(batch)
            actions.append(f"{pending}: orphaned base snapshot removed")
        if head is None:
            # An old head without the repository: a commit stopped between its renames. With
            # its workspace, _resume_between_renames handled it; without (destroyed by
            # hand), the old head is all there is: give it its name back.
            for dataset in family:
                parsed = _names.parse_temporary(dataset)
                if parsed and parsed[1] == "old" and self._ws(parsed[2]) not in family:
                    self.zfs.rename(dataset, self.name)
                    actions.append(f"{parsed[2]}: workspace gone, old head {dataset} restored")
                    break
            return actions
        for dataset in family:
            parsed = _names.parse_temporary(dataset)
            if parsed and parsed[1] == "old":
                self.zfs.unmount(dataset)
                batch = Batch().destroy(dataset, required=False).destroy(self._base(parsed[2]), required=False)
                skipped = self.zfs.apply(batch).skipped
                self._defer(skipped)
                if dataset not in skipped:
                    actions.append(f"{parsed[2]}: retired {dataset} destroyed")
        return actions


class Transaction:
    """An open transaction; use it as a context manager to commit or roll back.

    ``path`` is where the caller changes files; ``pattern`` is init or sync; ``id`` is
    the transaction id, with which any process can commit or roll it back.
    """

    def __init__(self, repository: Repository, record: _Record) -> None:
        self.repository = repository
        self._record = record
        self.id = record.tx
        self.pattern = record.pattern
        self.dataset = record.dataset
        self.path = record.path
        self.mountpoint = record.mountpoint
        self.owner = record.owner
        self.mode = record.mode
        self.inherits_mountpoint = record.inherits
        self.state = State.OPEN

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

    def _require_open(self) -> None:
        if self.state is not State.OPEN:
            raise TransactionStateError(f"transaction {self.id} is already {self.state.value}", dataset=self.dataset)

    def commit(self, message: str | None = None) -> Commit:
        """Make the workspace the repository and record a commit snapshot.

        Afterwards the repository's dataset holds the workspace's files, is mounted at its
        mountpoint (the ``mountpoint`` property, so it stays right after a reboot) and is
        owned as recorded; the temporary datasets and snapshots are gone. Raises
        ConflictError, changing nothing, if the repository was written after begin.

        After a crash: if the commit point was reached (the pool records ``committing``),
        the next call on the repository, or ``recover``, finishes the commit; otherwise
        the transaction is still open, unchanged.
        """
        self._require_open()
        commit = self.repository.commit(self.id, message)
        self.state = State.COMMITTED
        return commit

    def rollback(self) -> None:
        """Throw the workspace away; the repository is left exactly as it was.

        After a crash midway, the next call on the repository (or ``recover``) finishes
        the rollback.
        """
        self._require_open()
        self.repository.rollback(self.id)
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
