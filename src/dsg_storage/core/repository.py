"""A repository (one ZFS dataset) and the steps that change it: begin, commit, rollback,
recover. Each step runs under the repository's lock and starts by recovering whatever a
crash interrupted; what a step does is planned as actions (``patterns``, ``recovery``,
``placement``) and applied through the boundary (``actions.execute``).

Durability. Everything a transaction needs is recorded in the pool as user properties
(``dsg-storage:*``) on its temporary dataset, so any process on any host that imports the
pool can see it, commit it, roll it back or recover it. Its ``state`` moves
``beginning -> open -> aborting`` (rollback) or, with the dataset renamed to the
repository's name, ``-> committed``. Each change is written in the same ZFS sync task as
the step it guards (channel-program batches). The states recovery handles are listed in
``recovery``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import attrs

from .. import _log, names
from ..errors import (
    ConflictError,
    DsgStorageError,
    InvalidNameError,
    PoolUnavailableError,
    ReplicaError,
    TransactionNotFoundError,
    TransactionStateError,
    ZfsError,
)
from ..names import P_REQUESTED, P_STATE
from ..zfs.allow import AllowList
from ..zfs.boundary import open_zfs
from ..zfs.port import Batch, ZfsPort
from . import status
from .actions import Action, Apply, Outcome, execute
from .lock import HeldLock, repository_lock
from .options import Owner, check_user_properties
from .patterns import begin_actions, commit_actions, new_transaction, pattern_of
from .receive import Received, StreamSource, plan_receive
from .records import Commit, PendingTransaction, Phase, Record, RepositoryStatus
from .recovery import (
    RecoveryStep,
    commit_snapshot_of,
    finish_commit,
    plan_recovery,
    remount_workspace,
    undo_transaction,
)
from .retire import defer
from .status import PoolPropertyPolicy
from .transaction import Transaction
from .view import PoolView, observe

if TYPE_CHECKING:
    from ..queue import Queue
    from ..settings import Settings

log = _log.getLogger("dsg_storage")
#: Recovery applies at most this many steps in one call (each a handful of actions); a
#: pool that still needs more is reported rather than worked on forever.
MAX_RECOVERY_STEPS = 64


def _now() -> datetime:
    return datetime.now(UTC)


class Repository:
    """A repository: one ZFS dataset, mounted at a path its user owns.

    ``allow`` (an AllowList, or a comma-separated string) confines every change; by
    default it comes from ``DSG_STORAGE_ALLOW`` and allows nothing when that is unset.
    ``policy`` (the sudo policy) checks every property read from the pool that would
    steer where root mounts or what it chowns, before anything acts on it.
    ``settings`` (default: the environment, ``Settings.default``) says where the step
    locks and the queue of deferred destroys live.
    Every changing call first recovers interrupted steps (see ``recover``).
    """

    def __init__(  # noqa: PLR0913  the public constructor: every option a keyword
        self,
        name: str,
        *,
        allow: AllowList | str | None = None,
        zfs: ZfsPort | None = None,
        lock_timeout: float = 10.0,
        queue: Queue | None = None,
        policy: PoolPropertyPolicy | None = None,
        settings: Settings | None = None,
        primary: bool = False,
    ) -> None:
        self.name = names.validate_repository(name)
        self.primary = primary
        self.policy = policy
        self.settings = settings
        self.zfs: ZfsPort = zfs if zfs is not None else open_zfs(allow)
        self.lock_timeout = lock_timeout
        self._queue = queue
        self._held = 0
        self._lock: HeldLock | None = None

    def __repr__(self) -> str:
        return f"Repository({self.name!r})"

    # ------------------------------------------------------------------ reads
    def exists(self) -> bool:
        return self.zfs.exists(self.name)

    def view(self, *, committed: str | None = None) -> PoolView:
        """What the pool shows about this repository now (no lock taken), checked
        against the policy when there is one (``committed``: ``core.view.observe``)."""
        unfinished = self._lock.unfinished_begin() if self._lock is not None else None
        return status.view(self.zfs, self.name, self.policy, unfinished_begin=unfinished, committed=committed)

    def history(self) -> list[Commit]:
        """Commits, oldest first. Raises RepositoryNotFoundError if the dataset is missing."""
        return status.history(self.zfs, self.name)

    def pending(self) -> list[PendingTransaction]:
        """Transactions not finished yet (open, or interrupted and awaiting recovery)."""
        return status.pending(self.view(), self.zfs.host)

    def status(self) -> RepositoryStatus:
        """Mountpoint, owner, mode, last commit, pending transactions (``core.status``)."""
        return status.status(self.zfs, self.name, self.policy)

    def transaction(self, tx: str) -> Transaction:
        """The open transaction ``tx`` (possibly begun by another process)."""
        return Transaction(self, self._open_record(tx, self.view()))

    def _open_record(self, tx: str, view: PoolView) -> Record:
        names.validate_tx_id(tx)
        for record in view.records():
            if record.tx != tx:
                continue
            if record.phase is not Phase.OPEN:
                raise TransactionStateError(
                    f"transaction {tx} on {self.name} is {record.phase.value}, not open",
                    dataset=record.dataset,
                    hint=f"'dsg-storage recover {self.name}' finishes it",
                )
            return record
        raise TransactionNotFoundError(
            f"no open transaction {tx} on repository {self.name}",
            dataset=self.name,
            hint=f"'dsg-storage status {self.name}' lists the open ones",
        )

    # ------------------------------------------------------------------ the lock
    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold this repository's step lock (re-entrant for this object), so that no other
        process is in the middle of a step meanwhile; extensions that change the
        repository (bundle import) run under it and call ``recover`` first."""
        if self._held:
            self._held += 1
            try:
                yield
            finally:
                self._held -= 1
            return
        directory = self.settings.lock_dir if self.settings is not None else None
        with repository_lock(self.name, timeout=self.lock_timeout, directory=directory) as held:
            self._held, self._lock = 1, held
            try:
                yield
            finally:
                self._held, self._lock = 0, None

    def _run(self, actions: list[Action]) -> Outcome:
        """Apply ``actions``; queue the destroys that could not run now (``retire.defer``)."""
        outcome = execute(self.zfs, actions)
        if outcome.skipped:
            defer(self.name, outcome.skipped, self._open_queue)
        return outcome

    def _open_queue(self) -> Queue:
        from ..queue import Queue  # here: only a commit that must defer a destroy opens it

        self._queue = self._queue or Queue(settings=self.settings)
        return self._queue

    # ------------------------------------------------------------------ recovery
    def recover(self, *, abort_stale: float | None = None) -> list[str]:
        """Finish every interrupted step on this repository; return what was done.

        ``abort_stale`` (seconds): also roll back open transactions begun at least that
        long ago whose workspace nobody uses (a caller that died between begin and
        commit); recovery never ends an open transaction otherwise (for cron jobs).

        A commit interrupted after its first step is completed, unless the repository
        had changed since begin (then it is rolled back and ``status`` says why); an
        interrupted begin or rollback is undone; open transactions are left open (remounted if
        needed); an interrupted bundle import is undone (its ``.dsg-recv-`` dataset
        destroyed, or the repository rolled back to the import's base); retired datasets
        are destroyed when they can be; the repository is mounted at its mountpoint with
        its owner and mode. Every state is listed in ``dsg_storage.core.recovery``.
        Idempotent, and safe to run from several processes at once (they take turns).
        Runs automatically at the start of begin, commit and rollback.
        """
        with self.exclusive():
            done, _ = self._recover()
            if abort_stale is not None:
                done += self._abort_stale(abort_stale)
            return done

    def _recover(self) -> tuple[list[str], PoolView]:
        """``recover``'s loop; also returns the view it ended with (what the pool shows
        now: nothing was changed after it was read)."""
        with self.exclusive():
            done: list[str] = []
            tried: set[RecoveryStep] = set()
            for _ in range(MAX_RECOVERY_STEPS):
                view = self.view()
                if view.replica and not self.primary:
                    break  # another host's transactions and mounts: not ours to act on
                step = next((s for s in plan_recovery(view) if s not in tried), None)
                if step is None:
                    break
                tried.add(step)
                outcome = self._run(list(step.actions))
                deferred = f" (deferred: {', '.join(outcome.skipped)} still in use)" if outcome.skipped else ""
                done.append(step.summary + deferred)
                log.info("recover %s: %s", self.name, done[-1])
            else:
                raise ZfsError(
                    f"recovery of {self.name} did not settle after {MAX_RECOVERY_STEPS} steps: {done[-3:]}",
                    dataset=self.name,
                )
            if view.unfinished_begin is not None and view.unfinished_begin not in {r.tx for r in view.records()}:
                assert self._lock is not None  # held: exclusive()
                self._lock.clear()  # that begin's transaction is undone (or never was created)
                view = attrs.evolve(view, unfinished_begin=None)
            return done, view

    def _abort_stale(self, older_than: float) -> list[str]:
        view, done = self.view(), []
        for record in view.records():
            age = status.age(record.begun, view.now)
            if record.phase is not Phase.OPEN or age is None or age < older_than:
                continue
            users = self.zfs.host.holders(record.path)
            if users:
                done.append(f"{record.tx}: stale ({age:.0f}s old) but in use by {', '.join(users)}; left open")
                continue
            self._run(undo_transaction(view, record))
            done.append(f"{record.tx}: stale open transaction (begun {record.begun}, {age:.0f}s ago) rolled back")
            log.warning("recover %s: %s", self.name, done[-1])
        return done

    def _recovered(self) -> PoolView:
        """Recover, for a step that changes the repository: refused on a replica."""
        return self._ours(self._recover()[1])

    def _ours(self, view: PoolView) -> PoolView:
        """``view``, unless the repository is a replica and the caller did not say it is
        the primary (ReplicaError: nothing is changed on another host's copy)."""
        if view.replica and not self.primary:
            raise ReplicaError(
                f"{self.name} is a replica (its properties were received from another host): not changed here",
                dataset=self.name,
                hint="if this copy is now the primary, say so: --primary (Repository(primary=True))",
            )
        return view

    # ------------------------------------------------------------------ dry runs
    def plan(
        self,
        operation: str,
        tx: str | None = None,
        *,
        mountpoint: str | None = None,
        owner: Owner | str | tuple[int, int] | None = None,
        mode: str | int | None = None,
        message: str | None = None,
    ) -> list[str]:
        """What ``operation`` (begin, commit, rollback, recover) would do now, one line per
        step, from what the pool shows: a dry run, which changes nothing. Recovery's
        steps come first (every changing call recovers first); the plan of the operation
        itself assumes they succeed. Takes the step lock for a moment (a step under way
        would otherwise look interrupted)."""
        with self.exclusive():
            view = self.view()
            if operation == "recover" and view.replica and not self.primary:
                return []
            lines = [line for step in plan_recovery(self._ours(view)) for line in step.describe()]
            if operation == "recover":
                return lines
            if operation == "begin":
                pattern, record = new_transaction(
                    view, self.zfs.allow, names.new_tx_id(), wanted=(mountpoint, owner, mode)
                )
                actions = [a for phase in begin_actions(pattern, record, view) for a in phase]
                return [
                    *lines,
                    f"begin ({pattern.kind.value}): a new transaction",
                    *(f"  {a.describe()}" for a in actions),
                ]
            record = self._open_record(names.validate_tx_id(tx or ""), view)
            if operation == "rollback":
                return [
                    *lines,
                    f"{record.tx}: roll back",
                    *(f"  {a.describe()}" for a in undo_transaction(view, record)),
                ]
            actions = commit_actions(view, record, message)
            finish = f"{record.tx}: then finish: mount {self.name} at {record.mountpoint}, take the commit snapshot"
            return [*lines, f"{record.tx}: commit", *(f"  {a.describe()}" for a in actions), finish]

    # ------------------------------------------------------------------ snapshot
    def snapshot(self, name: str, *, requested: datetime | None = None) -> None:
        """Take snapshot ``name`` (``REPO@short``) now, recording when it was requested.

        Raises PoolUnavailableError when the pool is not imported (``dsg-storage snapshot
        --queue`` then queues the request instead)."""
        if name.split("@", 1)[0] != self.name or not names.valid_snapshot_short(name.split("@", 1)[-1]):
            raise InvalidNameError(f"{name!r} is not a snapshot name of {self.name} (REPO@name)")
        pool = names.pool_of(self.name)
        if not self.zfs.exists(pool):
            raise PoolUnavailableError(f"pool {pool} is not imported", dataset=self.name)
        when = (requested or _now()).isoformat(timespec="seconds")
        self.zfs.snapshot([name], {P_REQUESTED: when})

    # ------------------------------------------------------------------ begin
    def begin(
        self,
        *,
        mountpoint: str | None = None,
        owner: Owner | str | tuple[int, int] | None = None,
        mode: str | int | None = None,
        properties: Mapping[str, str] | None = None,
    ) -> Transaction:
        """Open a transaction; the pattern is *init* if the dataset is missing, else *sync*.

        The caller changes files under ``tx.path`` and then commits or rolls back.
        ``mountpoint`` is required for init; for sync it defaults to the repository's
        and, if different, moves the repository there at commit. ``owner``/``mode`` default
        to what init recorded (init: the current user, 0755) and are applied to the root
        of the workspace now and of the repository at commit. ``properties``: ZFS user
        properties of the caller's (``org.example:job``) that the workspace is created
        with, in begin's first step (never a transaction without them), and that the
        repository carries after commit.

        One writer per repository: raises TransactionInProgressError while another
        transaction is open. After a crash during begin, the next call on the repository
        (or ``recover``) removes what the interrupted begin created (after a reboot in
        the middle of a begin, its transaction is left open instead: see
        ``core.lock``); the repository's content is never touched by begin.
        """
        tx, caller = names.new_tx_id(), check_user_properties(properties or {})
        # Fail before any change if a temporary dataset would be outside the allow-list.
        for name in (self.name, names.workspace_dataset(self.name, tx)):
            self.zfs.allow.check(name)
        with self.exclusive():
            view = self._recovered()
            pattern, record = new_transaction(view, self.zfs.allow, tx, wanted=(mountpoint, owner, mode))
            assert self._lock is not None  # held: exclusive()
            # The pool records the transaction as open from its first sync task on; until
            # begin's last step the lock file says it is not finished (see ``core.lock``).
            self._lock.note_begin(tx)
            created, opening = begin_actions(pattern, record, view, caller)
            self._run(created)
            self._run(opening)
            self._lock.clear()
            return Transaction(self, record)

    # ------------------------------------------------------------------ commit
    def commit(self, tx: str, message: str | None = None, *, wait: float = 0.0) -> Commit:
        """Commit transaction ``tx`` (see ``Transaction.commit``)."""
        with self.exclusive():
            view = self._recovered()
            record = self._open_record(tx, view)
            pattern = pattern_of(record)
            intent, *detach, commit_point = commit_actions(view, record, message, wait)
            # The first step records the caller's wish (and the message), so that
            # recovery completes the commit if this process dies from here on.
            self._run([intent])
            record = attrs.evolve(record, phase=Phase.COMMITTING, message=message or record.message)
            try:
                self._run(detach)
                since = pattern.since_base(self.zfs, self.name, record)  # one read of this moment
                changes = pattern.changes(self.zfs, self.name, record, since)
                strays = [] if changes else pattern.strays(view, record, since)
            except Exception:
                self._reattach(record)  # nothing changed: put the names and mounts back
                raise
            if changes:
                self._reattach(record)
                shown = ", ".join(changes[:3]) + (f" and {len(changes) - 3} more" if len(changes) > 3 else "")
                raise ConflictError(
                    f"repository {self.name} was changed after transaction {tx} began ({shown}); "
                    "committing would lose that change",
                    dataset=self.name,
                    hint=f"nothing was changed; roll back with 'dsg-storage rollback {self.name} {tx}'",
                )
            try:
                self._run([*strays, commit_point])  # the rename that gives the new content the repository's name
            except DsgStorageError as exc:
                self._reattach(record)
                raise pattern.commit_point_failed(exc, self.name, tx) from exc
            committed = attrs.evolve(record, dataset=self.name)
            view = self.view(committed=tx)
            outcome = self._run(finish_commit(view, committed))
            snapshot = commit_snapshot_of(view)
            guid, createtxg = outcome.created.get(snapshot, (0, 0))
            when = view.now.isoformat(timespec="milliseconds")
            return Commit(snapshot, tx, when, committed.message or None, guid, createtxg)

    def _reattach(self, record: Record) -> None:
        """Before the commit point, when the commit fails in front of its caller: give the
        repository its name back, remount both, and leave the transaction open."""
        self._run(pattern_of(record).reattach(observe(self.zfs, self.name, conflicts=False), record))
        self._run(remount_workspace(self.view(), record))
        self._run([Apply(Batch().set(record.dataset, {P_STATE: Phase.OPEN.value}))])

    # ------------------------------------------------------------------ rollback
    def rollback(self, tx: str) -> None:
        """Roll back (abort) the open transaction ``tx``; the repository is left as it was."""
        with self.exclusive():
            view = self._recovered()
            self._run(undo_transaction(view, self._open_record(tx, view)))

    abort = rollback

    # ------------------------------------------------------------------ receive
    def receive(
        self,
        source: StreamSource,
        *,
        mountpoint: str | None = None,
        owner: Owner | str | tuple[int, int] | None = None,
        mode: str | int | None = None,
    ) -> Received:
        """Land a checked stream source (a bundle: ``transfer``) in this repository: a
        full source creates it (``mountpoint`` as for an init, required unless inherited;
        ``owner``/``mode`` default to the current user and 0755), an incremental one
        applies onto its base, which must be the repository's latest snapshot, with no
        file changed since (``owner``/``mode`` default to the repository's own).

        Planned like a transaction (``core.receive``) and run under the step lock after
        recovering. All or nothing, also across a crash: a failure or a crash before the
        commit point is undone by recovery (here at once, or by the next call), after it
        recovery finishes the placement. Received repositories carry ``setuid=off`` and
        ``devices=off`` before they are ever mounted. Returns the plan with what ran."""
        with self.exclusive():
            plan = plan_receive(
                self.zfs, self._recovered(), source, self.policy, tx=names.new_tx_id(), wanted=(mountpoint, owner, mode)
            )
            ran: list[str] = []
            try:
                for action in plan.actions:
                    self._run([action])
                    ran.append(action.describe())
            except BaseException:
                self._recover()  # undoes what arrived before the commit point, places the repository
                raise
            ran += self._recover()[0]  # placed: mounted where it records, its owner and mode, unzoned
            return Received(plan, tuple(ran))

    def plan_receive(
        self,
        source: StreamSource,
        *,
        mountpoint: str | None = None,
        owner: Owner | str | tuple[int, int] | None = None,
        mode: str | int | None = None,
    ) -> list[str]:
        """What ``receive`` would do now, one line per step (recovery's first): its dry
        run, from the same plan. Changes nothing."""
        with self.exclusive():
            view = self._ours(self.view())
            lines = [line for step in plan_recovery(view) for line in step.describe()]
            plan = plan_receive(
                self.zfs, view, source, self.policy, tx=names.new_tx_id(), wanted=(mountpoint, owner, mode)
            )
            return [*lines, *plan.describe()]


def begin(
    repository: str,
    *,
    mountpoint: str | None = None,
    owner: Owner | str | tuple[int, int] | None = None,
    mode: str | int | None = None,
    allow: AllowList | str | None = None,
    properties: Mapping[str, str] | None = None,
) -> Transaction:
    """Shorthand for ``Repository(repository, allow=allow).begin(...)``."""
    return Repository(repository, allow=allow).begin(
        mountpoint=mountpoint, owner=owner, mode=mode, properties=properties
    )
