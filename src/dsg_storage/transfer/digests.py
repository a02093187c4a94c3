"""The chunk digests of a bundle's streams: computed from the file, and while it grows.

Why md5 for the stream bytes (JSON records and the structure keep sha256): these digests
detect accidental damage (a flipped byte, a truncation, a bad USB copy). An unkeyed digest
stored in the file itself cannot prove authenticity whatever the algorithm: whoever can
alter the file can recompute a sha256 as easily. md5's weakness is chosen collisions,
which do not matter for accidental damage. And it is 4.7 times as fast as sha256 where
sha256 has no hardware support (544 against 116 MiB/s on two threads, measured in the
reference VM), which is what lets verification keep up with ZFS. The algorithm's name is
stored (``"algorithm"``, ``layout``) so that a later version can change it.

The stream bytes are digested from the file through ``mmap`` windows of WINDOW_SIZE,
DIGEST_WORKERS at a time on threads (hashlib releases the GIL), each unmapped after use
(``ru_maxrss`` counts mapped file pages: a whole big part is never mapped); a file that
cannot be mapped is read instead, a chunk at a time into one buffer. Memory stays flat
whatever the bundle's size. One cost of mapping: a page that cannot be read (a disk's I/O
error, or a file truncated by someone else *while* it is mapped: the size is checked
before each window) raises SIGBUS, which ends the process, where a read would raise
OSError. ``read_digests`` is the read-based path, should that matter more.

While a producer (``lzc_send``) is still writing a stream at the end of the file, the
writer already digests its complete windows (``DigestAhead``: woken by inotify when the
file grows, no polling), so digesting overlaps the send and only the tail is left after
it; at most MAX_AHEAD bytes of digests wait in memory for the stream to end.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import select
import threading
from collections import deque
from collections.abc import Callable, Generator
from concurrent.futures import Future, ThreadPoolExecutor

from .._libc import libc
from .layout import CHUNK_SIZE

ProduceFn = Callable[[int], None]
"""Writes one stream into the file descriptor it is given, from the descriptor's current
offset, leaving the offset just after the stream (as ``lzc_send(snap, from, fd)`` does)."""

WINDOW_SIZE = 8 * CHUNK_SIZE  # mapped at once per worker; a multiple of CHUNK_SIZE
DIGEST_WORKERS = 2
MAX_AHEAD = 4 << 20  # digests held while a stream is still being written: 256 GiB of stream


class ShortRead(Exception):
    """The file ended at byte ``at``, before the bytes being digested."""

    def __init__(self, at: int) -> None:
        super().__init__(at)
        self.at = at


def window_digests(fd: int, offset: int, length: int) -> bytes:
    """The md5 of each CHUNK_SIZE piece of the file's bytes [offset, offset + length),
    concatenated. Maps that window only, and unmaps it before returning."""
    size = os.fstat(fd).st_size
    if size < offset + length:  # touching a mapping past the end would mean SIGBUS
        raise ShortRead(size)
    skew = offset % mmap.ALLOCATIONGRANULARITY
    try:
        window = mmap.mmap(fd, skew + length, access=mmap.ACCESS_READ, offset=offset - skew)
    except (OSError, ValueError):  # a file that cannot be mapped
        return read_digests(fd, offset, length)
    try:
        with memoryview(window) as view:
            return b"".join(
                hashlib.md5(view[at : at + CHUNK_SIZE], usedforsecurity=False).digest()
                for at in range(skew, skew + length, CHUNK_SIZE)
            )
    finally:
        window.close()


def read_digests(fd: int, offset: int, length: int) -> bytes:
    """As ``window_digests``, reading each chunk into one buffer."""
    digests = []
    end = offset + length
    with memoryview(bytearray(min(CHUNK_SIZE, length))) as buffer:
        for at in range(offset, end, CHUNK_SIZE):
            size = min(CHUNK_SIZE, end - at)
            done = 0
            while done < size:
                got = os.preadv(fd, [buffer[done:size]], at + done)
                if not got:
                    raise ShortRead(at + done)
                done += got
            digests.append(hashlib.md5(buffer[:size], usedforsecurity=False).digest())
    return b"".join(digests)


def stream_digests(fd: int, start: int, size: int) -> Generator[tuple[int, int, bytes], None, None]:
    """(offset in the stream, length, chunk digests) of each WINDOW_SIZE window of the
    ``size`` stream bytes at file offset ``start``, in order. DIGEST_WORKERS windows are
    digested at a time (one more waits its turn, unmapped); use it in ``closing``, so that
    abandoning it stops the workers at once."""
    windows = ((at, min(WINDOW_SIZE, size - at)) for at in range(0, size, WINDOW_SIZE))
    if size <= WINDOW_SIZE:  # no threads for one window
        for at, length in windows:
            yield at, length, window_digests(fd, start + at, length)
        return
    pool = ThreadPoolExecutor(DIGEST_WORKERS, thread_name_prefix="dsg-bundle-digest")
    queue: deque[tuple[int, int, Future[bytes]]] = deque()
    try:
        for at, length in windows:
            queue.append((at, length, pool.submit(window_digests, fd, start + at, length)))
            if len(queue) > DIGEST_WORKERS:
                first, first_length, digests = queue.popleft()
                yield first, first_length, digests.result()
        while queue:
            first, first_length, digests = queue.popleft()
            yield first, first_length, digests.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------------------- following a producer


def _inotify_modify_watch(fd: int) -> int | None:
    """An inotify descriptor that becomes readable whenever the file behind ``fd`` is
    written (IN_MODIFY; the kernel's own writes, such as lzc_send's, count too); None
    where inotify is unavailable."""
    lib = libc()
    watch = int(lib.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC))
    if watch < 0:
        return None
    if lib.inotify_add_watch(watch, f"/proc/self/fd/{fd}".encode(), 0x2) < 0:  # IN_MODIFY
        os.close(watch)
        return None
    return watch


class DigestAhead:
    """Digests a stream's complete windows while its producer is still writing it at the
    end of the file, so the read-back pass after it has only the tail left. Woken by
    inotify when the file grows and by the producer when it ends: no polling. Holds at
    most MAX_AHEAD bytes of digests; past that, the pass after does the rest."""

    def __init__(self, read_fd: int, start: int) -> None:
        self.read_fd = read_fd
        self.start = start
        self.digests = bytearray()
        self.done = 0  # stream bytes digested, a multiple of WINDOW_SIZE

    def run(self, produce: ProduceFn, write_fd: int) -> None:
        """``produce(write_fd)``, digesting meanwhile; raises what produce raised."""
        watch = _inotify_modify_watch(write_fd) if os.fstat(write_fd).st_size == self.start else None
        if watch is None:  # no inotify, or not writing at the file's end: nothing ahead
            produce(write_fd)
            return
        wake_r, wake_w = os.pipe()
        failure: list[BaseException] = []

        def work() -> None:
            try:
                produce(write_fd)
            except BaseException as exc:  # noqa: BLE001 (re-raised below, in the caller's thread)
                failure.append(exc)
            finally:
                os.write(wake_w, b"x")

        thread = threading.Thread(target=work, name="dsg-bundle-produce", daemon=True)
        thread.start()
        try:
            self._follow(watch, wake_r)
        finally:
            thread.join()
            for fd in (watch, wake_r, wake_w):
                os.close(fd)
        if failure:
            raise failure[0]

    def _follow(self, watch: int, wake_r: int) -> None:
        # poll, not select: select cannot take a descriptor of 1024 or more (FD_SETSIZE),
        # which a process holding many files open hands out.
        poller = select.poll()
        for fd in (watch, wake_r):
            poller.register(fd, select.POLLIN)
        while len(self.digests) < MAX_AHEAD:
            grown = os.fstat(self.read_fd).st_size - self.start
            while grown - self.done >= WINDOW_SIZE and len(self.digests) < MAX_AHEAD:
                self.digests += window_digests(self.read_fd, self.start + self.done, WINDOW_SIZE)
                self.done += WINDOW_SIZE
            ready = [fd for fd, _ in poller.poll()]
            if wake_r in ready:
                return  # the producer ended: the pass after digests the tail
            with contextlib.suppress(BlockingIOError):  # drain; events coalesce anyway
                os.read(watch, 65536)
