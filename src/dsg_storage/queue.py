"""A durable queue of ZFS work that cannot run now, retried with backoff.

Items are destroys that a commit or rollback could not do yet (a dependent clone, a
hold, a busy mount) and snapshots requested while their pool was away. They live in a
local SQLite database (``$DSG_STORAGE_QUEUE``, default
``/var/lib/dsg-storage/queue.sqlite``; mode 0600 in a directory only its user can
change, ``hostfs.private_dir``): a request made while the pool is exported has
nowhere else to go, and one store keeps the order and the attempts of every item. What a
deferred destroy is about is also visible in the pool itself (``.dsg-old-`` datasets and
``@dsg-base-`` snapshots), which recovery retries on any host that imports it.

Durability: every state change is one SQLite transaction (WAL, synchronous=FULL), so a
process killed at any moment loses nothing. Applying an item is idempotent (a snapshot
that already exists with the item's id, a destroy whose target is gone, count as done),
so an item applied and then killed before being marked done is never applied twice.

Bounded: at most ``max_pending`` items are pending (``$DSG_STORAGE_QUEUE_MAX_PENDING``,
default 10000). When the queue is full, new work is refused with QueueFullError (nothing
is dropped to make room); an item already pending is not added twice, so asking again
for it is never refused.

States: ``pending`` (due at ``next_at``) -> ``done`` | ``dead`` (a permanent error, or
attempts exhausted; the reason is kept). Errors are classified: busy, pool unavailable
and the like are retried with exponential backoff and jitter (tenacity's wait
strategy); permission, invalid names and other permanent ones go to ``dead`` at once.
"""

from __future__ import annotations

import dataclasses
import enum
import errno
import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from . import hostfs
from . import names as _names
from .errors import (
    DatasetBusyError,
    DatasetExistsError,
    DatasetNotFoundError,
    DsgStorageError,
    InvalidArgumentError,
    PoolUnavailableError,
    QueueFullError,
    QueueItemNotFoundError,
    RepositoryBusyError,
    ZfsError,
)

# Not typing.TYPE_CHECKING (see dsg_storage/__init__.py); ZfsPort is only a type here, and
# its module loads attrs, which `queue stats` and `queue list` have no use for.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Self

    from .settings import Settings
    from .zfs.port import ZfsPort

ENV_VAR = "DSG_STORAGE_QUEUE"
DEFAULT_PATH = "/var/lib/dsg-storage/queue.sqlite"
MAX_PENDING_ENV = "DSG_STORAGE_QUEUE_MAX_PENDING"
DEFAULT_MAX_PENDING = 10_000
P_QUEUE_ID, P_REQUESTED = _names.P_QUEUE_ID, _names.P_REQUESTED


class ItemState(enum.StrEnum):
    PENDING = "pending"
    DONE = "done"
    DEAD = "dead"


class Kind(enum.StrEnum):
    DESTROY = "destroy"
    SNAPSHOT = "snapshot"


# dataclasses, not attrs, here: ``dsg-storage queue stats``/``list`` load only this module,
# and attrs' import alone is more than the command's start-up budget (#15).
@dataclasses.dataclass(frozen=True, slots=True)
class Item:
    id: int
    kind: Kind
    target: str
    state: ItemState
    attempts: int
    last_error: str | None
    created: float  # seconds since the epoch
    next_at: float
    updated: float

    def age(self, now: float) -> float:
        return now - self.created


@dataclasses.dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter, bounded in attempts and delay."""

    max_attempts: int = 10
    initial: float = 1.0
    max_delay: float = 600.0
    jitter: float = 1.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        import tenacity  # here: listing the queue or its stats never waits

        wait = tenacity.wait_exponential(multiplier=self.initial, max=self.max_delay) + tenacity.wait_random(
            0, self.jitter
        )
        state = tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.attempt_number = attempt
        return float(wait(state))


TRANSIENT: tuple[type[Exception], ...] = (DatasetBusyError, PoolUnavailableError, RepositoryBusyError)


def is_transient(kind: Kind, exc: Exception) -> bool:
    """Busy, pool away, dependents still there (for a destroy): worth retrying. Anything
    else (not allowed, invalid name, target missing or taken) is permanent."""
    if isinstance(exc, TRANSIENT):
        return True
    if kind is Kind.DESTROY and isinstance(exc, DatasetExistsError):
        return True  # a dependent clone or child exists: it may go away
    return type(exc) is ZfsError and exc.errno in (errno.EBUSY, errno.EAGAIN, errno.ENXIO, errno.EIO)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    args TEXT NOT NULL DEFAULT '{}',
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    created REAL NOT NULL,
    next_at REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS items_due ON items (state, next_at);
"""


class Queue:
    """The queue; ``clock`` and ``random`` jitter are injectable so tests never wait.

    ``path`` is the database (default ``$DSG_STORAGE_QUEUE`` or ``DEFAULT_PATH``);
    ``max_pending`` bounds the pending items (default ``$DSG_STORAGE_QUEUE_MAX_PENDING``
    or 10000). The environment's say comes from ``settings`` (default: read now,
    ``Settings.default``), and only for what was not passed."""

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        policy: RetryPolicy | None = None,
        clock: Callable[[], float] = time.time,
        max_pending: int | None = None,
        settings: Settings | None = None,
    ) -> None:
        if settings is None and (not path or max_pending is None):
            from .settings import Settings

            settings = Settings.default()
        if not path:
            path = (settings.queue_path if settings is not None else None) or DEFAULT_PATH
        if max_pending is None:
            max_pending = (settings.queue_max_pending if settings is not None else None) or DEFAULT_MAX_PENDING
        self.path = Path(path)
        self.policy = policy or RetryPolicy()
        self.max_pending = max_pending
        if self.max_pending < 1:
            raise InvalidArgumentError(f"max_pending must be at least 1, not {self.max_pending}")
        self.clock = clock
        # A directory only we can change, a 0600 file: SQLite then opens it (and its -wal
        # and -shm, which it creates with the database's mode) by a name nobody can redirect.
        self.path = Path(hostfs.private_path(self.path))
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # ------------------------------------------------------------------ adding
    def add_destroy(self, target: str) -> Item:
        """Queue the destroy of ``target`` (a filesystem or a snapshot), unless queued."""
        return self._add(Kind.DESTROY, target, {})

    def add_snapshot(self, target: str) -> Item:
        """Queue a snapshot (full name ``dataset@name``); its request time is recorded on it."""
        if "@" not in target:
            raise InvalidArgumentError(f"{target!r} is not a snapshot name (dataset@name)")
        return self._add(Kind.SNAPSHOT, target, {})

    def _add(self, kind: Kind, target: str, args: dict[str, Any]) -> Item:
        now = self.clock()
        with self._tx() as db:
            row = db.execute(
                "SELECT id FROM items WHERE kind = ? AND target = ? AND state = 'pending'", (kind.value, target)
            ).fetchone()
            if row is None:
                (pending,) = db.execute("SELECT COUNT(*) FROM items WHERE state = 'pending'").fetchone()
                if pending >= self.max_pending:
                    raise QueueFullError(
                        f"the queue {self.path} is full ({pending} pending items, at most {self.max_pending}): "
                        f"{kind.value} {target} was not queued",
                        dataset=target,
                        hint=f"run 'dsg-storage queue flush', drop dead work, or raise ${MAX_PENDING_ENV}",
                    )
                cursor = db.execute(
                    "INSERT INTO items (kind, target, args, state, created, next_at, updated) VALUES (?,?,?,?,?,?,?)",
                    (kind.value, target, json.dumps(args), ItemState.PENDING.value, now, now, now),
                )
                row = (cursor.lastrowid,)
        return self.get(int(row[0]))

    # ------------------------------------------------------------------ reading
    def get(self, item_id: int) -> Item:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM items WHERE id = ?", (item_id,)).fetchone()
        if row is None:
            raise QueueItemNotFoundError(f"no queue item {item_id}", hint="'dsg-storage queue list' shows them")
        return _item(row)

    def items(self, state: ItemState | None = None) -> list[Item]:
        if state is None:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM items ORDER BY id").fetchall()
        else:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM items WHERE state = ? ORDER BY id", (state.value,)
            ).fetchall()
        return [_item(r) for r in rows]

    def stats(self, *, only: Callable[[str], bool] | None = None) -> dict[str, Any]:
        """Items per state and the oldest pending one's age; with ``only``, of the items
        whose target it accepts (through sudo: those the policy allows). ``max_pending``
        and ``free`` are the whole queue's, since the bound is shared: ``free`` says
        whether new work of anyone's would be accepted."""
        now = self.clock()
        counts = {s.value: 0 for s in ItemState}
        if only is None:
            for state, count in self._db.execute("SELECT state, COUNT(*) FROM items GROUP BY state"):
                counts[state] = count
            oldest = self._db.execute("SELECT MIN(created) FROM items WHERE state = 'pending'").fetchone()[0]
            pending = counts[ItemState.PENDING.value]
        else:
            oldest = None
            for state, created, target in self._db.execute("SELECT state, created, target FROM items"):
                if not only(target):
                    continue
                counts[state] = counts.get(state, 0) + 1
                if state == ItemState.PENDING.value and (oldest is None or created < oldest):
                    oldest = created
            (pending,) = self._db.execute("SELECT COUNT(*) FROM items WHERE state = 'pending'").fetchone()
        return {
            "counts": counts,
            "oldest_pending_age": None if oldest is None else now - oldest,
            "oldest_pending_created": oldest,
            "max_pending": self.max_pending,
            "free": max(0, self.max_pending - pending),
        }

    # ------------------------------------------------------------------ steering
    def drop(self, item_id: int) -> Item:
        """Remove an item (any state); returns it as it was."""
        item = self.get(item_id)
        with self._tx() as db:
            db.execute("DELETE FROM items WHERE id = ?", (item_id,))
        return item

    def due(self, *, due_only: bool = True, pool: str | None = None) -> list[Item]:
        """The items ``run`` would attempt now, in order (a dry run: nothing changes)."""
        query = f"SELECT {_COLUMNS} FROM items WHERE state = 'pending'"
        if due_only:
            rows = self._db.execute(query + " AND next_at <= ? ORDER BY id", (self.clock(),)).fetchall()
        else:
            rows = self._db.execute(query + " ORDER BY id").fetchall()
        return [item for item in map(_item, rows) if pool is None or _names.pool_of(item.target) == pool]

    def run(
        self, zfs: ZfsPort, *, due_only: bool = True, pool: str | None = None, only_allowed: bool = False
    ) -> list[Item]:
        """Attempt every pending item that is due (every pending one with ``due_only``
        off), only those on ``pool`` if given; return the items as they are afterwards.
        One runner at a time (a lock beside the database), so two runners never apply
        the same item at once.

        With ``only_allowed``, items outside ``zfs.allow`` are left alone (pending) instead
        of being attempted and marked dead: a caller through sudo runs only its own."""
        dirfd = hostfs.private_dir(str(self.path.parent))
        try:
            lock_fd = hostfs.private_file(dirfd, f"{self.path.name}.lock")
        finally:
            os.close(dirfd)
        with os.fdopen(lock_fd, "r+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            # Items can depend on each other (a snapshot is destroyable once the clone
            # that depends on it is gone): while a pass makes progress, retry the rest.
            results: dict[int, Item] = {}
            remaining = self.due(due_only=due_only, pool=pool)
            if only_allowed:
                remaining = [item for item in remaining if zfs.allow.allows(item.target)]
            while remaining:
                retry = []
                for item in remaining:
                    results[item.id] = after = self._attempt(zfs, item)
                    if after.state is ItemState.PENDING:
                        retry.append(after)
                remaining = retry if len(retry) < len(remaining) else []
            return [results[item_id] for item_id in sorted(results)]

    def _attempt(self, zfs: ZfsPort, item: Item) -> Item:
        try:
            apply_item(zfs, item)
        except DsgStorageError as exc:
            attempts = item.attempts + 1
            permanent = not is_transient(item.kind, exc) or attempts >= self.policy.max_attempts
            now = self.clock()
            state = ItemState.DEAD if permanent else ItemState.PENDING
            next_at = now if permanent else now + self.policy.delay(attempts)
            reason = f"{type(exc).__name__}: {exc}"
            with self._tx() as db:
                db.execute(
                    "UPDATE items SET state = ?, attempts = ?, last_error = ?, next_at = ?, updated = ? "
                    "WHERE id = ? AND state = 'pending'",
                    (state.value, attempts, reason, next_at, now, item.id),
                )
            return self.get(item.id)
        now = self.clock()
        with self._tx() as db:
            db.execute(
                "UPDATE items SET state = 'done', attempts = attempts + 1, updated = ? WHERE id = ? AND state = 'pending'",
                (now, item.id),
            )
        return self.get(item.id)


_COLUMNS = "id, kind, target, state, attempts, last_error, created, next_at, updated"


def _item(row: Any) -> Item:
    return Item(row[0], Kind(row[1]), row[2], ItemState(row[3]), row[4], row[5], row[6], row[7], row[8])


def apply_item(zfs: ZfsPort, item: Item) -> None:
    """Do what ``item`` asks, idempotently: done already counts as done."""
    zfs.allow.check(item.target)  # before anything: never "done" for a target we may not touch
    pool = _names.pool_of(item.target)
    if not zfs.exists(pool):
        raise PoolUnavailableError(f"pool {pool} is not imported", dataset=item.target)
    if item.kind is Kind.DESTROY:
        retired = _names.parse_temporary(item.target)
        if retired and retired[1] == "old" and zfs.exists(item.target):
            # An old head is retired as recovery retires it (the promote first: the old
            # head keeps the history until then, which a reader's snapshot refused).
            from .core.actions import execute
            from .core.records import left_bases
            from .core.retire import retire_old_head
            from .names import P_LEFT_BASES

            repo, _, tx = retired
            foreign = zfs.foreign(item.target, _names.base_places(repo, tx))
            left = left_bases(zfs.get_props(repo, [P_LEFT_BASES]))
            execute(zfs, retire_old_head(repo, tx, zfs.host.orphaned_reader_mounts(), foreign, left))
        if zfs.exists(item.target):
            zfs.destroy(item.target)  # what is left, with the error that keeps it
        return
    dataset = item.target.split("@", 1)[0]
    if zfs.exists(item.target):
        mine = (zfs.get_props(item.target, [P_QUEUE_ID]) or {}).get(P_QUEUE_ID)
        if mine == str(item.id):
            return  # applied before a crash could mark it done
        raise DatasetExistsError(
            f"snapshot {item.target} exists already (not made by queue item {item.id})", dataset=item.target
        )
    if not zfs.exists(dataset):
        raise DatasetNotFoundError(f"dataset {dataset} of queued snapshot does not exist", dataset=dataset)
    requested = datetime.fromtimestamp(item.created, UTC).isoformat(timespec="seconds")
    zfs.snapshot([item.target], {P_QUEUE_ID: str(item.id), P_REQUESTED: requested})
