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
``beginning -> open -> committing | aborting``, each change written in the same ZFS sync
task as the step it guards (channel programs, see ``_zfs.Batch``):

* ``committing`` is written together with the promote (sync) at the start of commit: that
  is the **commit point**. A commit interrupted after it is finished (rolled forward) by
  recovery; one interrupted before it changed nothing.
* ``beginning`` and ``aborting`` mark steps that recovery undoes: an interrupted begin or
  rollback is rolled back.
* ``open`` transactions are never touched by recovery (their caller may still be
  working); ``status`` lists them and ``abort``/``rollback`` ends them.

Steps run under a per-repository lock (``_lock``), so recovery never races a live step.
"""

from __future__ import annotations

import enum
import logging
import os
import signal
from collections.abc import Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

import attrs

from . import _names
from ._allow import AllowList
from ._errors import (
    ConflictError,
    DatasetExistsError,
    DatasetNotFoundError,
    InvalidArgumentError,
    RepositoryNotFoundError,
    TransactionInProgressError,
    TransactionNotFoundError,
    TransactionStateError,
)
from ._lock import repository_lock
from ._names import prop
from ._options import Owner, check_mountpoint, parse_mode
from ._zfs import Batch, DatasetChangedError, Zfs, u64, zfs_mounts

log = logging.getLogger("dsg_storage")

P_TX, P_PATTERN, P_REPO = prop("tx"), prop("pattern"), prop("repository")
P_MOUNTPOINT, P_OWNER, P_MODE = prop("mountpoint"), prop("owner"), prop("mode")
P_PATH, P_BEGUN, P_INHERITS = prop("path"), prop("begun"), prop("inherits-mountpoint")
P_COMMITTED, P_MESSAGE = prop("committed"), prop("message")
P_STATE, P_PENDING, P_COMMIT_SNAPSHOT = prop("state"), prop("pending"), prop("commit-snapshot")
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
    COMMITTING = "committing"
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
    commit_snapshot: str
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
            commit_snapshot=props.get(P_COMMIT_SNAPSHOT, ""),
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
    Every changing call first recovers interrupted steps (see ``recover``).
    """

    def __init__(
        self,
        name: str,
        *,
        allow: AllowList | str | None = None,
        zfs: Zfs | None = None,
        lock_timeout: float = 10.0,
    ) -> None:
        self.name = _names.validate_repository(name)
        if zfs is None:
            allow_list = allow if isinstance(allow, AllowList) else AllowList.parse(allow) if allow else None
            zfs = Zfs(allow_list or AllowList.from_env())
        self.zfs = zfs
        self.lock_timeout = lock_timeout

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
        return [
            PendingTransaction(r.tx, r.pattern, r.phase.value, r.dataset, r.path, r.begun)
            for r in self._records(self.zfs.family(self.name))
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
            pending=tuple(
                PendingTransaction(r.tx, r.pattern, r.phase.value, r.dataset, r.path, r.begun)
                for r in self._records(family)
            ),
            leftovers=tuple(d for d in family if (_names.parse_temporary(d) or ("", "", ""))[1] == "old"),
        )

    def transaction(self, tx: str) -> Transaction:
        """The open transaction ``tx`` (possibly begun by another process)."""
        return Transaction(self, self._open_record(tx))

    def _open_record(self, tx: str) -> _Record:
        _names.validate_tx_id(tx)
        family = self.zfs.family(self.name)
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
        (or ``recover``) removes what the interrupted begin created; the repository itself
        is never touched by begin.
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
            self._recover()
            family = self.zfs.family(self.name)
            for record in self._records(family):
                raise TransactionInProgressError(
                    f"repository {self.name} already has an open transaction {record.tx} "
                    f"(begun {record.begun or 'at an unknown time'}, workspace {record.path})",
                    dataset=self.name,
                    hint=f"commit it, or abort it with 'dsg-storage abort {self.name} {record.tx}'",
                )
            current = family.get(self.name)
            if current is None:
                return self._begin_init(tx, mountpoint, owner_v, mode_v)
            return self._begin_sync(tx, current, mountpoint, owner_v, mode_v)

    def _inherited_mountpoint(self) -> str | None:
        """The mountpoint the repository gets by inheritance from its parent, if any.

        When the user's mountpoint is that one, the temporary datasets carry no local
        mountpoint and simply inherit theirs (beside it), and the rename at commit moves
        the repository's mount into place with no property to set: no ``zfs`` command.
        """
        parent, leaf = self.name.rsplit("/", 1)
        base = (self.zfs.get_props(parent, ["mountpoint"]) or {}).get("mountpoint")
        if not isinstance(base, str) or not base.startswith("/"):
            return None  # none or legacy
        return f"{base.rstrip('/')}/{leaf}"

    @staticmethod
    def _workspace_path(dataset: str, mountpoint: str, tx: str, inherits: bool) -> str:
        if inherits:  # where the temporary dataset inherits its mount: beside the repository's
            return f"{mountpoint.rsplit('/', 1)[0]}/{dataset.rsplit('/', 1)[1]}"
        return _names.workspace_mount_path(mountpoint, tx)

    def _begin_init(self, tx: str, mountpoint: str | None, owner: Owner | None, mode: int | None) -> Transaction:
        if mountpoint is None:
            raise InvalidArgumentError(
                f"repository {self.name} does not exist yet: begin needs a mountpoint to create it",
                dataset=self.name,
            )
        parent = self.name.rsplit("/", 1)[0]
        if not self.zfs.exists(parent):
            raise DatasetNotFoundError(f"parent dataset {parent} of {self.name} does not exist", dataset=parent)
        record = self._new_record(tx, Pattern.INIT, self._init(tx), mountpoint, owner or Owner.current(), mode)
        steps = _Steps("begin")
        self.zfs.create(record.dataset, self._record_props(record))
        steps.done()
        return self._open_workspace(record, steps)

    def _begin_sync(
        self, tx: str, current: Mapping[str, Any], mountpoint: str | None, owner: Owner | None, mode: int | None
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
        record = self._new_record(tx, Pattern.SYNC, self._ws(tx), mountpoint, owner, mode)
        steps = _Steps("begin")
        # The pending mark on the repository, then the base snapshot, in one sync task:
        # recovery finds an interrupted begin from the mark alone.
        self.zfs.apply(Batch().set(self.name, {P_PENDING: tx}).snapshot(self._base(tx), {P_TX: tx}))
        steps.done()
        self.zfs.clone(record.dataset, self._base(tx), self._record_props(record))
        steps.done()
        return self._open_workspace(record, steps)

    def _new_record(
        self, tx: str, pattern: Pattern, dataset: str, mountpoint: str, owner: Owner, mode: int | None
    ) -> _Record:
        inherits = mountpoint == self._inherited_mountpoint()
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
            commit_snapshot="",
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
            self._recover()
            record = self._open_record(tx)
            steps = _Steps("commit")
            when = _now()
            snapshot = _names.commit_snapshot(self.name, when)
            # The state goes last: a program interrupted midway must not claim "committing"
            # before the promote is done (see _zfs.Batch).
            intent = {P_COMMIT_SNAPSHOT: snapshot, P_COMMIT_MESSAGE: message or "", P_STATE: Phase.COMMITTING.value}
            # Unmount first: once nothing can write to the repository, the check that it is
            # unchanged since begin and the commit point are one sync task, with no window.
            batch = Batch()
            if record.pattern is Pattern.INIT:
                batch.require_absent(self.name).set(record.dataset, intent)
            else:
                base = self._base(record.tx).split("@", 1)[1]
                batch.require_unchanged(self.name, base).promote(record.dataset).set(record.dataset, intent)
            try:
                self.zfs.unmount(record.dataset)
                if record.pattern is Pattern.SYNC:
                    self.zfs.unmount(self.name)
                self.zfs.apply(batch)  # the commit point
            except Exception as exc:
                self._remount(record)  # refused before the commit point: all as it was
                if isinstance(exc, DatasetChangedError | DatasetExistsError):
                    raise self._refusal(record, exc) from exc
                raise
            steps.done()
            record = attrs.evolve(record, phase=Phase.COMMITTING, commit_snapshot=snapshot, message=message or "")
            self._roll_forward(record, steps)
        ids = self.zfs.get_props(snapshot, ["guid", "createtxg", P_COMMITTED]) or {}
        return Commit(
            snapshot=snapshot,
            tx=tx,
            committed=str(ids.get(P_COMMITTED, "")),
            message=message or None,
            guid=u64(ids.get("guid", 0)),
            createtxg=int(ids.get("createtxg", 0)),
        )

    def _remount(self, record: _Record) -> None:
        """Put the repository and the open workspace back where they were."""
        if record.pattern is Pattern.SYNC:
            self._place_head()
        self.zfs.mount(record.dataset, record.path)

    def _refusal(self, record: _Record, exc: Exception) -> Exception:
        if isinstance(exc, DatasetChangedError):
            return ConflictError(
                f"repository {self.name} was changed after transaction {record.tx} began "
                f"({exc.written} bytes written since its base snapshot); committing would lose that change",
                dataset=self.name,
                hint=f"nothing was changed; roll back with 'dsg-storage rollback {self.name} {record.tx}'",
            )
        return DatasetExistsError(
            f"repository {self.name} was created by someone else since init transaction {record.tx} began",
            dataset=self.name,
            hint=f"nothing was changed; abort it with 'dsg-storage abort {self.name} {record.tx}'",
        )

    def _roll_forward(self, record: _Record, steps: _Steps) -> None:
        """Finish a commit from wherever it stopped after its commit point (idempotent)."""
        temp = record.dataset if record.dataset != self.name else None
        if temp is not None and self.zfs.exists(temp):
            if record.pattern is Pattern.INIT and self.zfs.exists(self.name):
                raise DatasetExistsError(
                    f"cannot finish init {record.tx}: {self.name} was created by someone else",
                    dataset=self.name,
                )
            # Unmount first: a renamed filesystem stays mounted at its old path.
            self.zfs.unmount(temp)
            if record.pattern is Pattern.SYNC and self.zfs.exists(self.name):
                self.zfs.unmount(self.name)
                steps.done()
                self.zfs.rename(self.name, self._old(record.tx))
                steps.done()
            self.zfs.rename(temp, self.name)  # the repository's name now holds the new content
            steps.done()
        retired = [self._old(record.tx), self._base(record.tx)] if record.pattern is Pattern.SYNC else []
        self._place(record.mountpoint, record.inherits, record.owner, record.mode, retired[:1])
        _remove_mount_dir(record.path)  # after _place: an import may have mounted the new head there
        steps.done()
        # Snapshot, its properties, then the state: any prefix of this is finished by recovery.
        commit_props = {P_TX: record.tx, P_COMMITTED: _now().isoformat(timespec="milliseconds")}
        if record.message:
            commit_props[P_MESSAGE] = record.message
        batch = Batch()
        if self.zfs.exists(record.commit_snapshot):  # an interrupted earlier try made it
            batch.set(record.commit_snapshot, commit_props)
        else:
            batch.snapshot(record.commit_snapshot, commit_props)
        batch.set(self.name, {P_STATE: Phase.COMMITTED.value})
        for name in retired:
            batch.destroy(name, required=False)
        left = self.zfs.apply(batch)
        if left:
            log.warning("commit %s: cannot destroy %s yet; 'status' lists it", record.tx, ", ".join(left))
        steps.done()

    def _place(self, mountpoint: str, inherits: bool, owner: Owner, mode: int, others: list[str]) -> None:
        """Mount the repository at its mountpoint, alone, with its owner and mode."""
        for other in others:  # e.g. the old head, auto-mounted there by an import
            if self.zfs.exists(other):
                self.zfs.unmount(other)
        for path in zfs_mounts().get(self.name, []):
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
            self._recover()
            self._abort(self._open_record(tx), _Steps("rollback"))

    abort = rollback

    def _abort(self, record: _Record, steps: _Steps) -> None:
        """Undo a transaction that has not reached its commit point (idempotent)."""
        if record.phase is Phase.OPEN:
            self.zfs.apply(Batch().set(record.dataset, {P_STATE: Phase.ABORTING.value}))
            steps.done()
        if self.zfs.exists(record.dataset):
            if record.pattern is Pattern.SYNC:
                self._unpromote(record)
            # The directory goes while the dataset still records its path, so that an
            # interruption here leaves something for recovery to finish from.
            self.zfs.unmount(record.dataset)
            _remove_mount_dir(record.path)
            self.zfs.destroy(record.dataset)
            steps.done()
        _remove_mount_dir(record.path)
        if record.pattern is Pattern.SYNC and self.zfs.exists(self.name):
            batch = Batch().destroy(self._base(record.tx), required=False)
            self.zfs.apply(batch.set(self.name, {P_PENDING: ""}))
            steps.done()

    def _unpromote(self, record: _Record) -> None:
        """A commit interrupted inside its first sync task may have promoted the workspace
        without reaching the commit point: give the base snapshot back to the repository."""
        origin = (self.zfs.get_props(self.name, ["origin"]) or {}).get("origin")
        if origin == f"{record.dataset}@{self._base(record.tx).split('@', 1)[1]}":
            self.zfs.promote(self.name)

    # ------------------------------------------------------------------ recovery
    def recover(self) -> list[str]:
        """Finish every interrupted step on this repository; return what was done.

        A commit interrupted after its commit point is finished; an interrupted begin or
        rollback is undone; open transactions are left open (remounted if needed); retired
        datasets are destroyed when they can be; the repository is mounted at its
        mountpoint with its owner and mode. Idempotent, and safe to run from several
        processes at once (they take turns). Runs automatically at the start of begin,
        commit and rollback.
        """
        with self._lock():
            return self._recover()

    def _recover(self) -> list[str]:
        actions: list[str] = []
        steps = _Steps("recover")
        family = self.zfs.family(self.name)
        head = family.get(self.name)
        if head is not None and head.get(P_STATE) == Phase.COMMITTING and P_TX in head:
            record = _Record.parse(self.name, head)
            self._roll_forward(record, steps)
            actions.append(f"{record.tx}: commit finished")
        for record in self._records(family):
            if record.phase is Phase.COMMITTING:
                try:
                    self._roll_forward(record, steps)
                    actions.append(f"{record.tx}: commit finished")
                except DatasetExistsError:
                    self._abort(attrs.evolve(record, phase=Phase.ABORTING), steps)
                    actions.append(f"{record.tx}: rolled back ({self.name} was created by someone else)")
            elif record.phase in (Phase.BEGINNING, Phase.ABORTING):
                self._abort(record, steps)
                actions.append(
                    f"{record.tx}: interrupted {'begin' if record.phase is Phase.BEGINNING else 'rollback'} undone"
                )
            elif record.path not in zfs_mounts().get(record.dataset, []):
                self.zfs.mount(record.dataset, record.path)
                _apply_owner(record.path, record.owner, record.mode)
                actions.append(f"{record.tx}: open workspace remounted at {record.path}")
        if actions:
            family = self.zfs.family(self.name)
            head = family.get(self.name)
        actions += self._clean_leftovers(family, head)
        if head is not None and head.get(P_STATE) in (None, Phase.COMMITTED) and self._place_head(family):
            actions.append(f"remounted {self.name} at {head.get(P_MOUNTPOINT) or head.get('mountpoint')}")
        for action in actions:
            log.info("recover %s: %s", self.name, action)
        return actions

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

    def _clean_leftovers(self, family: Mapping[str, Mapping[str, str]], head: Mapping[str, str] | None) -> list[str]:
        actions = []
        pending = (head or {}).get(P_PENDING)
        if pending and self._ws(pending) not in family:
            # A begin that died between its base snapshot and its clone, or a rollback
            # that died after destroying the workspace.
            batch = Batch().destroy(self._base(pending), required=False).set(self.name, {P_PENDING: ""})
            self.zfs.apply(batch)
            actions.append(f"{pending}: orphaned base snapshot removed")
        for dataset in family:
            parsed = _names.parse_temporary(dataset)
            if parsed and parsed[1] == "old":
                self.zfs.unmount(dataset)
                batch = Batch().destroy(dataset, required=False)
                if head is not None:
                    batch.destroy(self._base(parsed[2]), required=False)
                left = self.zfs.apply(batch)
                if dataset not in left:
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
