"""Opt-in local record of live reads (repository lists, histories), served when a pool
cannot be found and the caller asks for it, always marked with the time it was taken.

Bounded: one copy per read (kind and key), so the cache grows with the number of
repositories, not with time; ``stats`` shows what it holds and ``clear`` empties it.
Every answer served from it says its age (``CachedRead.age``).

After a crash: each read is stored in one SQLite transaction, so the cache holds either
the previous or the new copy of a read, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs

from .. import hostfs
from ..errors import CacheMissError

ENV = "DSG_STORAGE_CACHE"


@attrs.frozen
class CachedRead:
    payload: Any
    taken_at: str  # ISO 8601, UTC

    def age(self, now: float) -> float:
        """Seconds since the read was taken (``now``: seconds since the epoch)."""
        return age_of(self.taken_at, now)


def age_of(taken_at: str, now: float) -> float:
    """Seconds from ``taken_at`` (ISO 8601) to ``now``; never negative."""
    try:
        taken = datetime.fromisoformat(taken_at)
    except (TypeError, ValueError):
        raise CacheMissError(
            f"the read cache holds an unreadable time {taken_at!r}", hint="dsg-storage cache clear"
        ) from None
    return max(0.0, now - taken.timestamp())


@attrs.frozen
class CacheStats:
    path: str
    entries: dict[str, int]  # kind -> number of reads held
    oldest: str | None  # taken_at of the oldest read held
    newest: str | None
    file_bytes: int  # the database and its write-ahead log


class ReadCache:
    """SQLite file at ``path`` (or ``$DSG_STORAGE_CACHE``) holding the last copy of each read.

    The file is 0600 in a directory only its user can change (``hostfs.private_path``;
    the directory's mode is checked, not changed).
    With ``owner`` (uid, gid), every access runs as that user (``hostfs.as_user``): under
    sudo the cache is the invoking user's file, in a place they can write, never root's."""

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        clock: Callable[[], float] = time.time,
        owner: tuple[int, int] | None = None,
    ) -> None:
        if not path:
            from ..settings import Settings

            path = Settings.default().cache_path
        if not path:
            raise CacheMissError(f"no read cache configured (pass a path or set {ENV})")
        self.clock = clock
        self.owner = owner
        with self._as_owner():
            self.path = Path(hostfs.private_path(path, narrow=False))  # a place the user chose: keep its mode
            import sqlite3  # here: a read that uses no cache does not load it

            self._db = sqlite3.connect(self.path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS reads "
                "(kind TEXT, key TEXT, payload TEXT, taken_at TEXT, PRIMARY KEY (kind, key))"
            )

    def _as_owner(self) -> contextlib.AbstractContextManager[None]:
        return hostfs.as_user(*self.owner) if self.owner else contextlib.nullcontext()

    def record(self, kind: str, key: str, payload: Any) -> None:
        taken = datetime.fromtimestamp(self.clock(), UTC).isoformat(timespec="seconds")
        with self._as_owner(), self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO reads VALUES (?, ?, ?, ?)",
                (kind, key, json.dumps(payload, sort_keys=True), taken),
            )

    def get(self, kind: str, key: str) -> CachedRead:
        with self._as_owner():
            row = self._db.execute(
                "SELECT payload, taken_at FROM reads WHERE kind = ? AND key = ?", (kind, key)
            ).fetchone()
        if row is None:
            raise CacheMissError(f"the read cache {self.path} holds no {kind} of {key}", hint="read it live once first")
        try:
            return CachedRead(json.loads(row[0]), row[1])
        except (TypeError, ValueError, RecursionError):  # not JSON text: changed by something else
            raise CacheMissError(
                f"the read cache {self.path} holds an unreadable {kind} of {key}", hint="dsg-storage cache clear"
            ) from None

    def stats(self) -> CacheStats:
        entries = dict(self._db.execute("SELECT kind, COUNT(*) FROM reads GROUP BY kind ORDER BY kind").fetchall())
        oldest, newest = self._db.execute("SELECT MIN(taken_at), MAX(taken_at) FROM reads").fetchone()
        size = sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.exists())
        return CacheStats(str(self.path), entries, oldest, newest, size)

    def clear(self, kind: str | None = None) -> int:
        """Forget every read (of ``kind`` only, if given); returns how many were held."""
        with self._db:
            if kind is None:
                cursor = self._db.execute("DELETE FROM reads")
            else:
                cursor = self._db.execute("DELETE FROM reads WHERE kind = ?", (kind,))
        self._db.execute("VACUUM")  # give the space back: clearing is how the cache shrinks
        return int(cursor.rowcount)

    def close(self) -> None:
        with self._as_owner():
            self._db.close()
