"""Reading a bundle back, checked: its ends alone (``inspect``), every record
(``check_records``), every stream byte against its chunk digest (``verify``,
``CheckedRecords.check_stream``, ``iter_parts``).

    inspect(path) -> BundleInfo   # header, metadata, footer and trailer only: cheap
    verify(path) -> BundleInfo    # one full pass over every byte
    for part in part_ranges(path, expect=info):   # after verify: where each stream lies
        os.lseek(fd, part.offset, os.SEEK_SET); lzc_receive(snap, fd)  # reads part.size bytes
    records = check_records(f, expect=info)       # or: every record now, each stream
    records.check_stream(i)                       # later, beside a receiver (pread, mmap)
    for part, chunks in iter_parts(path):         # or the bytes, each chunk checked
        for chunk in chunks: ...  # feed a receiver; a BundleError means abort it

Every pass starts with the records (``layout.walk``), so a truncated or structurally
damaged file fails before any stream byte is read; the stream bytes are then digested
as ``digests`` does it and compared with the chunk digests. Nothing is ever written.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import stat
import threading
from collections.abc import Iterator
from contextlib import closing
from typing import Any, BinaryIO, TypeAlias

import attrs

from ..errors import BundleCorruptError, BundleError
from .digests import ShortRead, stream_digests
from .layout import (
    CHUNK_DIGEST_SIZE,
    CHUNK_SIZE,
    HEADER,
    METADATA,
    BundleInfo,
    PartRecords,
    PartSummary,
    RecordReader,
    walk,
)
from .progress import ProgressFn

Source: TypeAlias = str | os.PathLike[str] | BinaryIO
"""A bundle's path, or a file already opened (``open_checked``): reading through one open
file lets every pass read the same bytes, whatever happens to the name meanwhile."""


def _chunk_error(r: RecordReader, part: PartRecords, chunk: int) -> BundleCorruptError:
    first = part.offset + chunk * CHUNK_SIZE
    last = min(first + CHUNK_SIZE, part.offset + part.size) - 1
    return r.corrupt(f"chunk {chunk + 1} of part {part.index + 1} (bytes {first}-{last}) does not match its digest")


def _changed_digests(r: RecordReader, part: PartRecords) -> BundleCorruptError:
    return r.corrupt(f"the chunk digests of part {part.index + 1} changed while the part was being read")


class StreamCheckStopped(Exception):
    """A stream's check ended early because its caller asked it to (``stop``): it proved
    nothing about the stream."""


def _check_stream(
    r: RecordReader,
    part: PartRecords,
    progress: ProgressFn | None,
    *,
    done: int,
    total: int,
    stop: threading.Event | None = None,
) -> int:
    """Digest a part's stream (windows, on threads) against its chunk digests; the stream
    bytes done after it. Reads only through pread and mmap: the descriptor's offset is
    left alone. ``stop`` set ends it at the next window (``StreamCheckStopped``)."""
    r.where = f"part {part.index + 1}"
    digest = hashlib.md5(usedforsecurity=False)  # of the digests compared against, in case they changed
    try:
        with closing(stream_digests(r.fd, part.offset, part.size)) as windows:
            for at, length, found in windows:
                if stop is not None and stop.is_set():
                    raise StreamCheckStopped(f"the check of part {part.index + 1} was stopped")
                first = at // CHUNK_SIZE
                expected = r.pread(part.digests_at + first * CHUNK_DIGEST_SIZE, len(found))
                digest.update(expected)
                if found != expected:
                    bad = next(
                        i
                        for i in range(0, len(found), CHUNK_DIGEST_SIZE)
                        if found[i : i + CHUNK_DIGEST_SIZE] != expected[i : i + CHUNK_DIGEST_SIZE]
                    )
                    raise _chunk_error(r, part, first + bad // CHUNK_DIGEST_SIZE)
                done += length
                if progress is not None:
                    progress(done, total)
    except ShortRead as short:
        raise r.truncated(short.at) from None
    if digest.hexdigest() != part.digest:
        raise _changed_digests(r, part)
    return done


class _Streamer:
    """The chunks of each part, each checked before it goes out (``iter_parts``)."""

    def __init__(self, r: RecordReader, progress: ProgressFn | None, total: int) -> None:
        self.r, self.progress, self.total = r, progress, total
        self.done = 0
        self.failed: BundleError | None = None

    def chunks(self, part: PartRecords) -> Iterator[bytes]:
        try:
            yield from self._read(part)
        except BundleError as exc:
            self.failed = exc
            raise

    def _read(self, part: PartRecords) -> Iterator[bytes]:
        r = self.r
        r.where = f"part {part.index + 1}"
        digest = hashlib.md5(usedforsecurity=False)
        # One chunk is held back until the next is checked, and the last until the part's
        # chunk digests are confirmed unchanged: a consumer feeding a receiver never hands
        # over a whole stream that is wrong.
        pending: bytes | None = None
        for chunk, at in enumerate(range(0, part.size, CHUNK_SIZE)):
            data = r.pread(part.offset + at, min(CHUNK_SIZE, part.size - at))
            expected = r.pread(part.digests_at + chunk * CHUNK_DIGEST_SIZE, CHUNK_DIGEST_SIZE)
            digest.update(expected)
            if hashlib.md5(data, usedforsecurity=False).digest() != expected:
                raise _chunk_error(r, part, chunk)
            self.done += len(data)
            if self.progress is not None:
                self.progress(self.done, self.total)
            if pending is not None:
                yield pending
            pending = data
        if digest.hexdigest() != part.digest:
            raise _changed_digests(r, part)
        if pending is not None:
            yield pending


_HANDED_OVER = re.compile(r"/proc/self/fd/[0-9]+")


def open_checked(path: str | os.PathLike[str], *, what: str = "bundle") -> BinaryIO:
    """Open ``path`` for reading, refusing what is not a regular file (a FIFO would hang a
    reader, a device would never end) and a symbolic link as the last component (root
    reads the file a user names: it reads that file, not where a link points). Raises
    ``BundleError``; ``FileNotFoundError`` for a missing file."""
    name = os.fspath(path)
    # A descriptor handed over as /proc/self/fd/N (the CLI under sudo opens the user's
    # file as the user) is a link by nature: it is the file already opened, not a path.
    nofollow = 0 if _HANDED_OVER.fullmatch(name) else os.O_NOFOLLOW
    try:
        # O_NONBLOCK: opening a FIFO with no writer would block forever; cleared below.
        fd = os.open(name, os.O_RDONLY | nofollow | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise BundleError(f"{name} is a symbolic link; give the {what} file itself") from None
        if isinstance(exc, FileNotFoundError):
            raise
        raise BundleError(f"{name} cannot be opened: {exc.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise BundleError(f"{name} is not a regular file (a {_file_kind(mode)}); a {what} is a regular file")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        f = os.fdopen(fd, "rb")
        f.raw.name = name  # type: ignore[attr-defined]  # (FileIO's name is settable) for messages
        return f
    except BaseException:
        os.close(fd)
        raise


def _file_kind(mode: int) -> str:
    kinds = [
        (stat.S_ISDIR, "directory"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
    ]
    return next((name for test, name in kinds if test(mode)), "special file")


@contextlib.contextmanager
def _opened(source: Source) -> Iterator[tuple[BinaryIO, str]]:
    """The open file behind ``source`` and its name; a path is opened (and closed after)."""
    if isinstance(source, str | os.PathLike):
        with open_checked(source) as f:
            yield f, os.fspath(source)
        return
    mode = os.fstat(source.fileno()).st_mode
    if not stat.S_ISREG(mode):
        raise BundleError(f"{getattr(source, 'name', 'the bundle')} is not a regular file (a {_file_kind(mode)})")
    yield source, str(getattr(source, "name", "the bundle"))


def _open(f: BinaryIO, name: str) -> tuple[RecordReader, int, dict[str, Any]]:
    """Header, footer and trailer (kept in the reader, or the reason it failed), metadata."""
    r = RecordReader(f, name, os.fstat(f.fileno()).st_size)
    f.seek(0)  # an open file may have been read before (every pass starts from its start)
    version = r.header()
    r.probe_tail()  # first: it tells whether running out of data means truncation
    r.seek(HEADER.size)
    r.where = "the metadata record"
    _, payload, start = r.record((METADATA,), "the metadata")
    return r, version, r.json(payload, start, METADATA)


def _structure(
    f: BinaryIO, name: str, expect: BundleInfo | None = None
) -> tuple[RecordReader, BundleInfo, list[PartRecords]]:
    """The first pass, whole; with ``expect``, refuse a bundle that differs from it."""
    r, version, metadata = _open(f, name)
    info, parts = walk(r, version, metadata)
    if r.tail_error is not None:  # the walk found the footer sound: the file changed meanwhile
        raise r.tail_error
    if expect is not None and expect != info:
        raise BundleError(f"{r.name} changed since it was verified: its metadata or parts differ")
    return r, info, parts


def inspect(source: Source) -> BundleInfo:
    """Header, metadata and trailer, each checked against its own checksum, without reading
    the rest. Cheap whatever the size; says nothing of the streams (``verify`` does)."""
    with _opened(source) as (f, name):
        r, version, metadata = _open(f, name)
        if r.trailer is None:
            walk(r, version, metadata)  # for a precise error; failing that, the tail's own
            assert r.tail_error is not None
            raise r.tail_error
        return BundleInfo(version, metadata, r.trailer.parts, r.trailer.total_size, r.size, r.trailer.structure_sha256)


def verify(source: Source, *, progress: ProgressFn | None = None, expect: BundleInfo | None = None) -> BundleInfo:
    """Read every byte once: structure, every record's checksum, every chunk's digest,
    each part's size and digest, the structure hash, the footer. Raises on the first
    problem (a damaged record or a truncation before reading any stream). With ``expect``
    (from ``inspect`` of the same file), a bundle that differs from it is refused."""
    with _opened(source) as (f, name):
        checked = _check_records(f, name, expect)
        done = 0
        for index in range(len(checked.info.parts)):
            done = checked.check_stream(index, progress=progress, done=done)
        return checked.info


@attrs.frozen(eq=False)
class CheckedRecords:
    """A bundle whose every record was checked (``check_records``: the first half of
    ``verify``), its streams not yet. ``check_stream(i)`` is the second half for part
    ``i``: it reads the stream only through pread and mmap, never moving the open file's
    offset, so it may run on a thread of its own while a receiver (``lzc_receive``) reads
    the same open file from that offset. Valid while that file stays open."""

    info: BundleInfo
    _reader: RecordReader
    _parts: tuple[PartRecords, ...]

    def check_stream(
        self, index: int, *, progress: ProgressFn | None = None, done: int = 0, stop: threading.Event | None = None
    ) -> int:
        """Check part ``index``'s stream against its chunk digests (``BundleCorruptError``
        naming the chunk, ``BundleTruncatedError``); ``progress`` gets ``done`` plus the
        part's bytes checked so far, which it returns at the end. ``stop`` set ends it
        early with ``StreamCheckStopped``."""
        return _check_stream(
            self._reader, self._parts[index], progress, done=done, total=self.info.total_size, stop=stop
        )


def _check_records(f: BinaryIO, name: str, expect: BundleInfo | None) -> CheckedRecords:
    r, info, parts = _structure(f, name, expect)
    return CheckedRecords(info, r, tuple(parts))


def check_records(source: BinaryIO, *, expect: BundleInfo | None = None) -> CheckedRecords:
    """Check every record of the open bundle ``source`` (header, metadata, each part's
    records and chunk digests, the structure hash, trailer and footer) but no stream
    byte: cheap whatever the size. With ``expect``, a bundle that differs from it raises
    ``BundleError``. The streams are then checked with ``CheckedRecords.check_stream``."""
    with _opened(source) as (f, name):
        return _check_records(f, name, expect)


def part_ranges(source: Source, *, expect: BundleInfo | None = None) -> list[PartSummary]:
    """The parts, with the file offset and size of each stream, for a receiver to read
    straight from the file. Reads and checks every record again but no stream byte, so
    call it after ``verify``, passing what that returned as ``expect``: a bundle that
    differs from it raises ``BundleError`` ("changed since it was verified")."""
    with _opened(source) as (f, name):
        return list(_structure(f, name, expect)[1].parts)


def iter_parts(
    source: Source, *, progress: ProgressFn | None = None, expect: BundleInfo | None = None
) -> Iterator[tuple[PartSummary, Iterator[bytes]]]:
    """Yield each part's summary (from the trailer) and an iterator over its stream's chunks.

    Every record is checked before the first part, as ``verify`` does (so a truncated or
    structurally damaged file fails at once), and each chunk against its digest before it
    goes out, so the file may have changed since it was verified: a part's last chunk goes
    out only after its chunk digests were confirmed; on a mismatch the chunk iterator
    raises ``BundleCorruptError`` instead of ending, so a consumer feeding a receiver
    aborts it without committing. Moving to the next part without reading all chunks reads
    (and checks) the rest. With ``expect`` (from an earlier ``inspect`` or ``verify``), a
    bundle whose metadata or parts differ from it raises ``BundleError`` before the first part.
    """
    with _opened(source) as (f, name):
        r, info, parts = _structure(f, name, expect)
        streamer = _Streamer(r, progress, info.total_size)
        for summary, part in zip(info.parts, parts, strict=True):
            chunks = streamer.chunks(part)
            yield summary, chunks
            for _ in chunks:
                pass
            if streamer.failed is not None:  # the caller caught an error in the part and went on
                raise streamer.failed


__all__ = [  # PartSummary too: what part_ranges and iter_parts give
    "CheckedRecords",
    "PartSummary",
    "Source",
    "StreamCheckStopped",
    "check_records",
    "inspect",
    "iter_parts",
    "open_checked",
    "part_ranges",
    "verify",
]
