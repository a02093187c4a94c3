"""One step at a time per repository on this host.

Every step that changes a repository (begin, commit, rollback, recover) runs under an
exclusive ``flock`` on ``$DSG_STORAGE_LOCK_DIR/<repository>.lock`` (default
``/run/dsg-storage/locks``). The kernel drops the lock when its process dies, so a lock
that can be taken means no live process is in the middle of a step: whatever state the
pool records for an unfinished step was left by a crash and can be recovered. A pool is
imported on one host at a time, so a host-local lock is enough.

The directory is checked to be only the current user's to change (``hostfs.private_dir``:
created 0700, every directory above it root's or ours and writable by nobody else) and
each lock file is opened through it without following a link, mode 0600: nobody else can
redirect a lock root takes onto another file.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import tenacity

from .. import hostfs
from ..errors import RepositoryBusyError

ENV_VAR = "DSG_STORAGE_LOCK_DIR"
DEFAULT_DIR = "/run/dsg-storage/locks"


def lock_dir() -> str:
    return os.path.abspath(os.environ.get(ENV_VAR) or DEFAULT_DIR)


def lock_path(repository: str) -> Path:
    return Path(lock_dir()) / _lock_name(repository)


def _lock_name(repository: str) -> str:
    return repository.replace("/", "%") + ".lock"


def _open_lock(repository: str) -> int:
    dirfd = hostfs.private_dir(lock_dir())
    try:
        return hostfs.private_file(dirfd, _lock_name(repository))
    finally:
        os.close(dirfd)


@contextmanager
def repository_lock(
    repository: str, *, timeout: float = 10.0, sleep: Callable[[float], None] = time.sleep
) -> Iterator[None]:
    """Hold the repository's step lock; wait at most ``timeout`` seconds for it."""
    fd = _open_lock(repository)
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
        yield
    finally:
        os.close(fd)  # releases the lock
