"""One step at a time per repository on this host.

Every step that changes a repository (begin, commit, rollback, recover) runs under an
exclusive ``flock`` on ``$DSG_STORAGE_LOCK_DIR/<repository>.lock`` (default
``/run/dsg-storage/locks``). The kernel drops the lock when its process dies, so a lock
that can be taken means no live process is in the middle of a step: whatever state the
pool records for an unfinished step was left by a crash and can be recovered. A pool is
imported on one host at a time, so a host-local lock is enough.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import tenacity

from ..errors import RepositoryBusyError

ENV_VAR = "DSG_STORAGE_LOCK_DIR"
DEFAULT_DIR = "/run/dsg-storage/locks"


def lock_path(repository: str) -> Path:
    directory = Path(os.environ.get(ENV_VAR) or DEFAULT_DIR)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    return directory / (repository.replace("/", "%") + ".lock")


@contextmanager
def repository_lock(
    repository: str, *, timeout: float = 10.0, sleep: Callable[[float], None] = time.sleep
) -> Iterator[None]:
    """Hold the repository's step lock; wait at most ``timeout`` seconds for it."""
    fd = os.open(lock_path(repository), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
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
