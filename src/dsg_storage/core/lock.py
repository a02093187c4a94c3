"""One step at a time per repository on this host.

Every step that changes a repository (begin, commit, rollback, recover) runs under an
exclusive ``flock`` on ``$DSG_STORAGE_LOCK_DIR/<repository>.lock`` (default
``/run/dsg-storage/locks``; the directory is a parameter, read from the environment by
``settings`` only). The kernel drops the lock when its process dies, so a lock
that can be taken means no live process is in the middle of a step: whatever state the
pool records for an unfinished step was left by a crash and can be recovered. A pool is
imported on one host at a time, so a host-local lock is enough.

The directory is checked to be only the current user's to change (``hostfs.private_dir``:
created 0700, every directory above it root's or ours and writable by nobody else) and
each lock file is opened through it without following a link, mode 0600: nobody else can
redirect a lock root takes onto another file.

While a begin runs, the lock file also names its transaction (``begin TX``). The pool
records a new transaction as open from the sync task that creates it (begin needs no
further one); a name left in the file by a process that died tells the next step that
this open transaction's begin never finished, so recovery undoes it. The note lives in
``/run`` and does not outlive a reboot: after a power cut during a begin, its
transaction is left open (``status`` shows it, ``recover --abort-stale`` ends it).
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .. import hostfs, names
from ..errors import CorruptStateError, InvalidNameError, RepositoryBusyError

ENV_VAR = "DSG_STORAGE_LOCK_DIR"
DEFAULT_DIR = "/run/dsg-storage/locks"


def lock_dir(directory: str | None = None) -> str:
    """``directory``, else ``$DSG_STORAGE_LOCK_DIR`` (``Settings.default``), else ``DEFAULT_DIR``."""
    if directory is None:
        from ..settings import Settings

        directory = Settings.default().lock_dir
    return os.path.abspath(directory or DEFAULT_DIR)


def lock_path(repository: str, directory: str | None = None) -> Path:
    return Path(lock_dir(directory)) / _lock_name(repository)


def _lock_name(repository: str) -> str:
    return repository.replace("/", "%") + ".lock"


def _open_lock(repository: str, directory: str) -> int:
    dirfd = hostfs.private_dir(directory)
    try:
        return hostfs.private_file(dirfd, _lock_name(repository))
    finally:
        os.close(dirfd)


#: A note is one short line; anything longer was not written by us.
_NOTE_LIMIT = 128


class HeldLock:
    """A repository's step lock, held; its file notes the begin under way, if any."""

    def __init__(self, fd: int, repository: str, directory: str | None = None) -> None:
        self._fd = fd
        self.repository = repository
        self.path = lock_path(repository, directory)

    def note_begin(self, tx: str) -> None:
        """Before begin's first change: name its transaction (no fsync: only a process
        that dies must leave the note; a reboot may take it)."""
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"begin {names.validate_tx_id(tx)}\n".encode(), 0)

    def clear(self) -> None:
        """After begin's last change, or once recovery has undone an unfinished begin."""
        os.ftruncate(self._fd, 0)

    def unfinished_begin(self) -> str | None:
        """The transaction of a begin whose process died before it finished, if any."""
        raw = os.pread(self._fd, _NOTE_LIMIT + 1, 0)
        if not raw:
            return None
        word, _, tx = raw.decode("ascii", "replace").rstrip("\n").partition(" ")
        try:
            if word != "begin" or len(raw) > _NOTE_LIMIT:
                raise ValueError("not a note dsg-storage writes")
            return names.validate_tx_id(tx)
        except (ValueError, InvalidNameError) as exc:
            raise CorruptStateError(
                f"the lock file {self.path} holds {raw[:40]!r}: {exc}",
                dataset=self.repository,
                hint="it was not written by dsg-storage; remove it (no step may be running)",
            ) from exc


@contextmanager
def repository_lock(
    repository: str,
    *,
    timeout: float = 10.0,
    sleep: Callable[[float], None] = time.sleep,
    directory: str | None = None,
) -> Iterator[HeldLock]:
    """Hold the repository's step lock (in ``directory``, default ``lock_dir()``); wait
    at most ``timeout`` seconds for it."""
    import tenacity  # here: reads (status, history) never lock, and need not load it

    directory = lock_dir(directory)
    fd = _open_lock(repository, directory)
    try:
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(BlockingIOError),
            stop=tenacity.stop_after_delay(timeout),
            wait=tenacity.wait_exponential(multiplier=0.01, max=0.25),
            sleep=sleep,
            reraise=True,
        )
        try:
            retrying(fcntl.flock, fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RepositoryBusyError(
                f"another process is in the middle of a step on {repository} (waited {timeout:g}s)",
                dataset=repository,
                hint="retry when it is done",
            ) from None
        yield HeldLock(fd, repository, directory)
    finally:
        os.close(fd)  # releases the lock
