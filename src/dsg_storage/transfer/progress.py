"""Progress of a bundle's long passes: the callback they report to, and a reporter for
while ZFS sends or receives and says nothing until done."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

ProgressFn = Callable[[int, int | None], None]
"""Called with (stream bytes done, total stream bytes or None when unknown), as chunks are
digested: per window when writing or verifying, per chunk in ``iter_parts``."""


@contextlib.contextmanager
def reporting(progress: ProgressFn | None, position: Callable[[], int], base: int, total: int | None) -> Iterator[None]:
    """While ZFS sends or receives (it reports nothing until done), show how far it has
    got (the file's size, or its offset) four times a second. Display only: nothing waits
    on it, and its timing changes nothing but the progress shown."""
    if progress is None:
        yield
        return
    stop = threading.Event()

    def report() -> None:
        while not stop.wait(0.25):
            done = base + position()
            progress(done, max(total or 0, done) or None)

    thread = threading.Thread(target=report, name="dsg-storage-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
