"""The bundle file format, version 1: ZFS send streams and JSON metadata in one checked file.

A bundle holds one or more *parts* (each one ZFS send stream: a full stream of the first
snapshot, then incremental streams to each later one) and the caller's metadata. Each
part's stream is stored raw and contiguous, so that ZFS writes it straight into the file
(``lzc_send`` into the file's descriptor) and reads it straight back (``lzc_receive``
from a descriptor seeked to the part's offset), without passing through Python. Every
byte is still covered by a digest, so a flipped byte, a truncated file, a file that is
not a bundle and a bundle from a newer format are each reported precisely. Nothing here
knows about ZFS.

Layout (integers big-endian)::

    header   b"DSGBUNDL"  u32 format version
    records  type (1 byte)  u64 payload length  payload  sha256(type + length + payload)
    M  metadata        JSON object, the caller's                                  (once, first)
    per part:
      B  part begin    JSON {"index", "info"}
      S  stream        b"S" u64 length, then the raw stream bytes: no checksum after them
      D  chunk digests the md5 of each CHUNK_SIZE piece of the stream, in order (16 bytes
                       each, binary), then the record's sha256 like any record
      E  part end      JSON {"index", "size", "chunk_size", "algorithm": "md5",
                       "digest": md5 of the D payload (all the chunk digests)}
    T  trailer         JSON {"part_count", "parts": [{"index", "info", "size", "digest",
                       "offset"}], "total_size", "structure_sha256"}          (once, last)
    footer   u64 offset of the trailer record  b"DSGB-END"

A part's ``offset`` is the file offset of its stream's first byte. ``structure_sha256`` is
the sha256 of every byte before the trailer except the raw stream bytes: the header, every
record (the S headers with their lengths, the D records with the chunk digests). So the
chunk digests cover the stream bytes, and the structure hash covers the chunk digests,
the lengths and the order and presence of everything: together every byte of the file.
The chunk digests are binary, in their own record, rather than a JSON list in the E record,
so that reading them takes constant memory however long the stream (a 10 TiB part has ten
million chunks; as a JSON list in Python that would be about a gigabyte).

Why md5 for the stream bytes (JSON records and the structure keep sha256): these digests
detect accidental damage (a flipped byte, a truncation, a bad USB copy). An unkeyed digest
stored in the file itself cannot prove authenticity whatever the algorithm: whoever can
alter the file can recompute a sha256 as easily. md5's weakness is chosen collisions,
which do not matter for accidental damage. And it is 4.7 times as fast as sha256 where
sha256 has no hardware support (544 against 116 MiB/s on two threads, measured in the
reference VM), which is what lets verification keep up with ZFS. The algorithm's name is
stored (``"algorithm"``) so that a later version can change it.

The stream bytes are digested from the file through ``mmap`` windows of WINDOW_SIZE,
DIGEST_WORKERS at a time on threads (hashlib releases the GIL), each unmapped after use
(``ru_maxrss`` counts mapped file pages: a whole big part is never mapped); a file that
cannot be mapped is read instead, a chunk at a time into one buffer. JSON records are
capped at MAX_JSON_SIZE, and every length is checked against its cap and the file's size
before anything is read, so a damaged length can never make a reader allocate more.
Memory stays flat whatever the bundle's size. One cost of mapping: a page that cannot be
read (a disk's I/O error, or a file truncated by someone else *while* it is mapped: the
size is checked before each window) raises SIGBUS, which ends the process, where a read
would raise OSError. ``_read_digests`` is the read-based path, should that matter more.

While a producer (``lzc_send``) is still writing a stream at the end of the file, the
writer already digests its complete windows (``_DigestAhead``: woken by inotify when the
file grows, no polling), so digesting overlaps the send and only the tail is left after
it; at most MAX_AHEAD bytes of digests wait in memory for the stream to end.

API::

    with open(path, "wb") as f, BundleWriter(f, {"repository": ...}) as writer:
        writer.add_part({"snapshot": ...}, lambda fd: lzc_send(snap, base, fd))
        writer.add_part_from({"snapshot": ...}, functools.partial(os.read, pipe_fd))
    # leaving the block closes the writer (trailer and footer); the caller fsyncs

    inspect(path) -> BundleInfo   # header, metadata, footer and trailer only: cheap
    verify(path) -> BundleInfo    # one full pass over every byte
    for part in part_ranges(path, expect=info):   # after verify: where each stream lies
        os.lseek(fd, part.offset, os.SEEK_SET); lzc_receive(snap, fd)  # reads part.size bytes
    records = check_records(f, expect=info)       # or: every record now, each stream
    records.check_stream(i)                       # later, beside a receiver (pread, mmap)
    for part, chunks in iter_parts(path):         # or the bytes, each chunk checked
        for chunk in chunks: ...  # feed a receiver; a BundleError means abort it

``BundleInfo.parts`` and ``PartSummary.index`` count from 0; messages count parts and
chunks from 1 ("part 1" is the first), as a user would.

After a crash: a writer that did not reach ``close`` leaves a file without trailer or
footer (and, inside an unfinished part, a stream length of 2**64 - 1), which every reader
rejects as truncated. Write to a temporary name, close, fsync and rename, so that a bundle
under its final name is always whole.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import mmap
import os
import re
import select
import stat
import struct
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from typing import Any, BinaryIO, Self, TypeAlias, TypeVar

import attrs

from .._libc import libc
from ..errors import (
    BundleCorruptError,
    BundleError,
    BundleTruncatedError,
    BundleVersionError,
    InvalidArgumentError,
    NotABundleError,
)
from . import safejson

ProgressFn = Callable[[int, int | None], None]
"""Called with (stream bytes done, total stream bytes or None when unknown), as chunks are
digested: per window when writing or verifying, per chunk in ``iter_parts``."""

ProduceFn = Callable[[int], None]
"""Writes one stream into the file descriptor it is given, from the descriptor's current
offset, leaving the offset just after the stream (as ``lzc_send(snap, from, fd)`` does)."""

FORMAT_VERSION = 1
MAGIC = b"DSGBUNDL"
END_MAGIC = b"DSGB-END"
CHUNK_SIZE = 1 << 20
CHUNK_ALGORITHM = "md5"
WINDOW_SIZE = 8 * CHUNK_SIZE  # mapped at once per worker; a multiple of CHUNK_SIZE
DIGEST_WORKERS = 2
MAX_JSON_SIZE = 16 << 20  # the metadata and the trailer
MAX_PART_RECORD = 64 << 10  # a part's begin and end records: a part's info is small
MAX_PARTS = 100_000

Source: TypeAlias = str | os.PathLike[str] | BinaryIO
"""A bundle's path, or a file already opened (``open_checked``): reading through one open
file lets every pass read the same bytes, whatever happens to the name meanwhile."""

METADATA, PART_BEGIN, STREAM, CHUNK_DIGESTS, PART_END, TRAILER = b"M", b"B", b"S", b"D", b"E", b"T"
_KIND = {
    METADATA: "metadata record",
    PART_BEGIN: "part begin record",
    STREAM: "stream header",
    CHUNK_DIGESTS: "chunk digests record",
    PART_END: "part end record",
    TRAILER: "trailer record",
}

_HEADER = struct.Struct(">8sI")
_RECORD = struct.Struct(">cQ")  # a record's head; also the stream header (b"S", length)
_FOOTER = struct.Struct(">Q8s")
_CHECK_SIZE = 32  # the sha256 after each record
_OVERHEAD = _RECORD.size + _CHECK_SIZE
_CHUNK_DIGEST_SIZE = 16  # md5
_UNFINISHED = 2**64 - 1  # the stream length until the part is whole: past any file's end
_PIECE = 64 << 10  # reads of a chunk digests record
_MD5_HEX, _SHA256_HEX = re.compile("[0-9a-f]{32}"), re.compile("[0-9a-f]{64}")

_T = TypeVar("_T")


@attrs.frozen
class PartSummary:
    """One part: its position, the caller's description, its stream's size, its digest (hex
    md5 of its chunk digests: it identifies the content, it is not the md5 of the stream)
    and ``offset``, the file offset of the stream's first byte."""

    index: int
    info: Mapping[str, Any]
    size: int
    digest: str
    offset: int


@attrs.frozen
class BundleInfo:
    format_version: int
    metadata: Mapping[str, Any]
    parts: tuple[PartSummary, ...]
    total_size: int  # stream bytes, all parts
    file_size: int
    # The trailer's hash of everything but the stream bytes (the chunk digests included):
    # with the parts' digests it identifies the whole file, at no cost to compute.
    structure_sha256: str = ""


def _chunk_count(size: int) -> int:
    return -(-size // CHUNK_SIZE)


# ---------------------------------------------------------------------------- digesting
class _ShortRead(Exception):
    """The file ended at byte ``at``, before the bytes being digested."""

    def __init__(self, at: int) -> None:
        super().__init__(at)
        self.at = at


def _window_digests(fd: int, offset: int, length: int) -> bytes:
    """The md5 of each CHUNK_SIZE piece of the file's bytes [offset, offset + length),
    concatenated. Maps that window only, and unmaps it before returning."""
    size = os.fstat(fd).st_size
    if size < offset + length:  # touching a mapping past the end would mean SIGBUS
        raise _ShortRead(size)
    skew = offset % mmap.ALLOCATIONGRANULARITY
    try:
        window = mmap.mmap(fd, skew + length, access=mmap.ACCESS_READ, offset=offset - skew)
    except (OSError, ValueError):  # a file that cannot be mapped
        return _read_digests(fd, offset, length)
    try:
        with memoryview(window) as view:
            return b"".join(
                hashlib.md5(view[at : at + CHUNK_SIZE], usedforsecurity=False).digest()
                for at in range(skew, skew + length, CHUNK_SIZE)
            )
    finally:
        window.close()


def _read_digests(fd: int, offset: int, length: int) -> bytes:
    """As ``_window_digests``, reading each chunk into one buffer."""
    digests = []
    end = offset + length
    with memoryview(bytearray(min(CHUNK_SIZE, length))) as buffer:
        for at in range(offset, end, CHUNK_SIZE):
            size = min(CHUNK_SIZE, end - at)
            done = 0
            while done < size:
                got = os.preadv(fd, [buffer[done:size]], at + done)
                if not got:
                    raise _ShortRead(at + done)
                done += got
            digests.append(hashlib.md5(buffer[:size], usedforsecurity=False).digest())
    return b"".join(digests)


def _stream_digests(fd: int, start: int, size: int) -> Generator[tuple[int, int, bytes], None, None]:
    """(offset in the stream, length, chunk digests) of each WINDOW_SIZE window of the
    ``size`` stream bytes at file offset ``start``, in order. DIGEST_WORKERS windows are
    digested at a time (one more waits its turn, unmapped); use it in ``closing``, so that
    abandoning it stops the workers at once."""
    windows = ((at, min(WINDOW_SIZE, size - at)) for at in range(0, size, WINDOW_SIZE))
    if size <= WINDOW_SIZE:  # no threads for one window
        for at, length in windows:
            yield at, length, _window_digests(fd, start + at, length)
        return
    pool = ThreadPoolExecutor(DIGEST_WORKERS, thread_name_prefix="dsg-bundle-digest")
    queue: deque[tuple[int, int, Future[bytes]]] = deque()
    try:
        for at, length in windows:
            queue.append((at, length, pool.submit(_window_digests, fd, start + at, length)))
            if len(queue) > DIGEST_WORKERS:
                first, first_length, digests = queue.popleft()
                yield first, first_length, digests.result()
        while queue:
            first, first_length, digests = queue.popleft()
            yield first, first_length, digests.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


MAX_AHEAD = 4 << 20  # digests held while a stream is still being written: 256 GiB of stream


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


class _DigestAhead:
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
                self.digests += _window_digests(self.read_fd, self.start + self.done, WINDOW_SIZE)
                self.done += WINDOW_SIZE
            ready = [fd for fd, _ in poller.poll()]
            if wake_r in ready:
                return  # the producer ended: the pass after digests the tail
            with contextlib.suppress(BlockingIOError):  # drain; events coalesce anyway
                os.read(watch, 65536)


# ---------------------------------------------------------------------------- writing
class BundleWriter:
    """Writes a bundle into ``fileobj``, a regular file opened for writing at its start
    (``open(path, "wb")``; not in append mode). ZFS writes each stream straight into it,
    and the writer reads the streams back from it to digest them (through the descriptor
    if the file was opened for reading too, else through a second descriptor on the same
    file). Never fsyncs: durability is the caller's decision. Leaving the ``with`` block
    without an exception closes the writer; with one, the file is left without its footer,
    which readers reject as truncated."""

    def __init__(
        self,
        fileobj: BinaryIO,
        metadata: Mapping[str, Any],
        *,
        progress: ProgressFn | None = None,
        total: int | None = None,
    ) -> None:
        if not isinstance(metadata, Mapping):
            raise InvalidArgumentError(f"bundle metadata must be a mapping, not {type(metadata).__name__}")
        encoded = _encode(metadata, "metadata")  # before writing anything
        self._fd = _writable_fd(fileobj)
        self._source = _readable_twin(fileobj, self._fd)  # None: the descriptor reads too
        self._read_fd = self._fd if self._source is None else self._source.fileno()
        self._file = fileobj
        self._name = str(getattr(fileobj, "name", "the bundle file"))
        self._progress = progress
        self._total = total
        self._structure = hashlib.sha256()  # every byte before the trailer but the streams
        self._offset = 0
        self._done = 0  # stream bytes digested, all parts
        self._parts: list[PartSummary] = []
        self._metadata: dict[str, Any] = json.loads(encoded)  # as readers will see it (tuples become lists...)
        self._info: BundleInfo | None = None
        self._broken = False
        self._write(_HEADER.pack(MAGIC, FORMAT_VERSION))
        self._record(METADATA, encoded)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        try:
            if exc_type is None:
                self.close()
        finally:
            self._release()

    def add_part(self, info: Mapping[str, Any], produce: ProduceFn) -> PartSummary:
        """Append a part whose stream ``produce(fd)`` writes into the file's descriptor, from
        its current offset, leaving the offset after the stream (``lzc_send`` does). The
        stream's length is taken from the offset; its bytes are then read back and digested."""
        self._check_open()
        index = len(self._parts)
        begin = _encode({"index": index, "info": info}, "part info")
        self._broken = True  # until the part is whole: a failing producer leaves a half part
        try:
            summary = self._add(index, begin, produce)
        except BaseException:
            self._release()  # the writer can do nothing more
            raise
        self._parts.append(summary)
        self._broken = False
        return summary

    def _add(self, index: int, begin: bytes, produce: ProduceFn) -> PartSummary:
        self._record(PART_BEGIN, begin)
        header_at = self._offset
        self._write(_RECORD.pack(STREAM, _UNFINISHED), hashed=False)  # hashed once its length is known
        self._file.flush()
        start = self._offset
        position = os.lseek(self._fd, 0, os.SEEK_CUR)
        if position != start:
            raise InvalidArgumentError(
                f"{self._name} is at byte {position}, not at byte {start} where the writer left it: "
                "something else moved or wrote through the file"
            )
        ahead = _DigestAhead(self._read_fd, start)
        ahead.run(produce, self._fd)
        end = os.lseek(self._fd, 0, os.SEEK_CUR)
        if end < start or os.fstat(self._fd).st_size < end:
            raise InvalidArgumentError(
                f"the producer of part {index + 1} left {self._name} at byte {end} and {os.fstat(self._fd).st_size} "
                f"bytes long, which is no stream written from byte {start}"
            )
        self._file.seek(end)  # the file object learns where the stream ended
        size = end - start
        header = _RECORD.pack(STREAM, size)
        if os.pwrite(self._fd, header, header_at) != len(header):
            raise OSError(f"{self._name}: a short write at byte {header_at}")
        self._structure.update(header)
        self._offset = end
        digest = self._digest(index, start, size, ahead)
        end_record = {"index": index, "size": size, "chunk_size": CHUNK_SIZE, "algorithm": CHUNK_ALGORITHM}
        self._record(PART_END, _encode({**end_record, "digest": digest}, "part end"))
        return PartSummary(index, json.loads(begin)["info"], size, digest, start)  # info as readers see it

    def add_part_from(self, info: Mapping[str, Any], read: Callable[[int], bytes]) -> PartSummary:
        """Append a part whose stream comes from ``read(n)`` (some bytes, ``b""`` at its end,
        like ``os.read`` on a pipe), copied into the file; then as ``add_part``."""

        def produce(fd: int) -> None:
            while data := read(CHUNK_SIZE):
                view = memoryview(data)
                while view:  # a write may be short
                    view = view[os.write(fd, view) :]

        return self.add_part(info, produce)

    def close(self) -> BundleInfo:
        """Write the trailer and the footer and flush; a second call returns the same."""
        if self._info is not None:
            return self._info
        self._check_open()
        trailer_offset = self._offset
        total = sum(part.size for part in self._parts)
        trailer = {
            "part_count": len(self._parts),
            "parts": [attrs.asdict(part) for part in self._parts],
            "total_size": total,
            "structure_sha256": self._structure.hexdigest(),
        }
        self._record(TRAILER, _encode(trailer, "trailer"), hashed=False)
        self._write(_FOOTER.pack(trailer_offset, END_MAGIC), hashed=False)
        self._file.flush()
        if os.fstat(self._fd).st_size > self._offset:  # an older, longer file; or a producer wrote past its end
            os.ftruncate(self._fd, self._offset)
        self._release()
        self._info = BundleInfo(
            FORMAT_VERSION, self._metadata, tuple(self._parts), total, self._offset, self._structure.hexdigest()
        )
        return self._info

    def _check_open(self) -> None:
        if self._info is not None:
            raise InvalidArgumentError("the bundle writer is closed")
        if self._broken:
            raise InvalidArgumentError("a part failed half-way; this bundle is incomplete and must be discarded")

    def _release(self) -> None:
        if self._source is not None:
            self._source.close()

    def _digest(self, index: int, start: int, size: int, ahead: _DigestAhead) -> str:
        """Write the part's chunk digests record: those ``ahead`` made while the stream was
        written, then the rest, reading the stream back. Returns its md5 (hex)."""
        head = _RECORD.pack(CHUNK_DIGESTS, _chunk_count(size) * _CHUNK_DIGEST_SIZE)
        check, digest = hashlib.sha256(head), hashlib.md5(usedforsecurity=False)
        self._write(head)

        def take(digests: bytes, length: int) -> None:
            self._write(digests)
            check.update(digests)
            digest.update(digests)
            self._done += length
            if self._progress is not None:
                self._progress(self._done, self._total)

        done = ahead.done if 0 < ahead.done <= size else 0
        if done:
            take(bytes(ahead.digests), done)
        try:
            with closing(_stream_digests(self._read_fd, start + done, size - done)) as windows:
                for _, length, digests in windows:
                    take(digests, length)
        except _ShortRead as short:
            raise BundleTruncatedError(
                f"{self._name} was cut short at byte {short.at} while part {index + 1} was being written"
            ) from None
        self._write(check.digest())
        return digest.hexdigest()

    def _record(self, rtype: bytes, payload: bytes, *, hashed: bool = True) -> None:
        head = _RECORD.pack(rtype, len(payload))
        check = hashlib.sha256(head)
        check.update(payload)
        self._write(head, hashed=hashed)
        self._write(payload, hashed=hashed)
        self._write(check.digest(), hashed=hashed)

    def _write(self, data: bytes, *, hashed: bool = True) -> None:
        view = memoryview(data)
        while view:  # a raw (unbuffered) file may write less than asked
            view = view[self._file.write(view) :]
        if hashed:
            self._structure.update(data)
        self._offset += len(data)


def _writable_fd(fileobj: BinaryIO) -> int:
    """The descriptor of ``fileobj``, once it is known to be a regular file at its start."""
    try:
        fd = fileobj.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        fd = -1
    if fd < 0 or not stat.S_ISREG(os.fstat(fd).st_mode):
        raise InvalidArgumentError(
            f"a bundle is written into a regular file (ZFS writes the streams straight into it), "
            f"not into {type(fileobj).__name__}"
        )
    if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND:
        raise InvalidArgumentError("a bundle cannot be written into a file opened for appending")
    if fileobj.tell() != 0:
        raise InvalidArgumentError(f"a bundle is written from the start of its file, not from byte {fileobj.tell()}")
    return fd


def _readable_twin(fileobj: BinaryIO, fd: int) -> io.FileIO | None:
    """None if ``fd`` can be read; else a second, read-only file on the same file."""
    if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDWR:
        return None
    names: list[Any] = [f"/proc/self/fd/{fd}", getattr(fileobj, "name", None)]
    for name in names:
        if not isinstance(name, str | bytes | os.PathLike):
            continue
        try:
            twin = open(name, "rb", buffering=0)  # noqa: SIM115 (the writer closes it)
        except OSError:
            continue
        if os.path.samestat(os.fstat(twin.fileno()), os.fstat(fd)):
            return twin
        twin.close()
    raise InvalidArgumentError("the bundle writer cannot read back the file it writes to digest it; open it with 'w+b'")


def _encode(value: Mapping[str, Any], what: str) -> bytes:
    try:
        data = json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"bundle {what} is not JSON-serialisable: {exc}") from None
    if len(data) > MAX_JSON_SIZE:
        raise InvalidArgumentError(f"bundle {what} takes {len(data)} bytes as JSON, more than {MAX_JSON_SIZE}")
    return data


# ---------------------------------------------------------------------------- reading
@attrs.frozen
class _Trailer:
    offset: int
    parts: tuple[PartSummary, ...]
    total_size: int
    structure_sha256: str


@attrs.frozen
class _Part:
    """A part as its records describe it; ``digests_at`` is the file offset of its chunk
    digests (the D record's payload)."""

    index: int
    info: Mapping[str, Any] | None  # None: not kept (the trailer could not be read first)
    offset: int
    size: int
    digests_at: int
    digest: str

    def summary(self) -> PartSummary:
        return PartSummary(self.index, self.info, self.size, self.digest, self.offset)  # type: ignore[arg-type]


class _Reader:
    """Reads one open bundle's records front to back, checking as it goes, and the stream
    bytes through the descriptor. ``where`` names the part of the file being read, for
    messages."""

    def __init__(self, f: BinaryIO, name: str, size: int, *, hashing: bool = True) -> None:
        self.f, self.fd, self.name, self.size = f, f.fileno(), name, size
        self.offset = 0
        self.structure = hashlib.sha256() if hashing else None
        self.where = "the header"
        # Until the footer is found the file may be cut short anywhere: running out of
        # data means truncation. Once it is found, the file is whole and an overrun is a
        # damaged length.
        self.complete = False
        self.bound = size  # where records other than the trailer must end
        self.trailer_bound = size
        self.trailer: _Trailer | None = None
        self.tail_error: BundleError | None = None

    def corrupt(self, detail: str) -> BundleCorruptError:
        where = "" if self.where in detail else f", in {self.where}"
        return BundleCorruptError(
            f"{self.name} is damaged: {detail}{where}",
            hint="its bytes changed in storage or in transfer; copy it again from its source",
        )

    def truncated(self, end: int) -> BundleTruncatedError:
        return BundleTruncatedError(
            f"{self.name} is truncated: it ends at byte {end}, inside {self.where} (expected more data)",
            hint="an export or a copy was cut short; make or copy it again",
        )

    def overrun(self, what: str, start: int, length: int, bound: int) -> BundleError:
        if not self.complete:
            return self.truncated(self.size)
        return self.corrupt(f"the {what} at byte {start} claims {length} bytes, running past byte {bound}")

    def seek(self, offset: int) -> None:
        self.f.seek(offset)
        self.offset = offset

    def read(self, n: int, *, hashed: bool = True) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise self.truncated(self.offset + len(data))
        self.offset += n
        if hashed and self.structure is not None:
            self.structure.update(data)
        return data

    def pread(self, offset: int, n: int) -> bytes:
        """Bytes of a range already checked to lie in the file (so a short read means it shrank)."""
        data = os.pread(self.fd, n, offset)
        if len(data) != n:
            raise self.truncated(offset + len(data))
        return data

    def header(self) -> int:
        data = self.f.read(_HEADER.size)
        if data[: len(MAGIC)] != MAGIC:
            what = "is empty" if not data else f"does not start with {MAGIC.decode()}"
            raise NotABundleError(f"{self.name} is not a dsg-storage bundle: it {what}")
        self.f.seek(0)
        _, version = _HEADER.unpack(self.read(_HEADER.size))
        if version > FORMAT_VERSION:
            raise BundleVersionError(
                f"{self.name} is bundle format version {version}, made by a newer dsg-storage; "
                f"this one reads format {FORMAT_VERSION} and older",
                hint="read it with a newer dsg-storage",
            )
        if version < 1:
            raise self.corrupt(f"format version {version} does not exist")
        return int(version)

    def head(self, allowed: tuple[bytes, ...], what: str) -> tuple[bytes, int, int, bytes]:
        """Read a record's head (or a stream header): (type, length, its offset, its bytes).
        Refuses a type not in ``allowed``, ``what`` saying what was expected."""
        start = self.offset
        head = self.read(_RECORD.size, hashed=False)
        rtype, length = _RECORD.unpack(head)
        kind = _KIND.get(rtype)
        if kind is None:
            raise self.corrupt(f"byte {start} holds an unknown record type {rtype!r}")
        if rtype not in allowed:
            raise self.corrupt(f"byte {start} holds a {kind} where {what} should be")
        if rtype == TRAILER:  # the structure hash covers what precedes the trailer
            self.where = "the trailer"
        elif self.structure is not None:
            self.structure.update(head)
        return rtype, int(length), start, head

    def record(self, allowed: tuple[bytes, ...], what: str) -> tuple[bytes, bytes, int]:
        """Read the next JSON record, checked: (type, payload, its offset)."""
        rtype, length, start, head = self.head(allowed, what)
        kind = _KIND[rtype]
        limit = MAX_PART_RECORD if rtype in (PART_BEGIN, PART_END) else MAX_JSON_SIZE
        if length > limit:
            raise self.corrupt(f"the {kind} at byte {start} claims {length} bytes, more than its limit {limit}")
        bound = self.trailer_bound if rtype == TRAILER else self.bound
        if start + _OVERHEAD + length > bound:
            raise self.overrun(kind, start, length, bound)
        hashed = rtype != TRAILER
        payload = self.read(length, hashed=hashed)
        check = hashlib.sha256(head)
        check.update(payload)
        if self.read(_CHECK_SIZE, hashed=hashed) != check.digest():
            raise self.corrupt(f"checksum mismatch in the {kind} at byte {start}")
        return rtype, payload, start

    def json(self, payload: bytes, start: int, kind: bytes) -> dict[str, Any]:
        try:
            value = safejson.loads(payload, max_size=MAX_JSON_SIZE)
        except safejson.JsonLimitError as exc:
            raise self.corrupt(f"the {_KIND[kind]} at byte {start} cannot be read: {exc}") from None
        if not isinstance(value, dict):
            raise self.corrupt(f"the {_KIND[kind]} at byte {start} is not a JSON object")
        return value

    def field(self, obj: Mapping[str, Any], key: str, kind: type[_T], what: str) -> _T:
        value = obj.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.corrupt(f"the {what} has no valid {key!r}")
        if isinstance(value, int) and value < 0:
            raise self.corrupt(f"the {what} has a negative {key!r}")
        return value

    def probe_tail(self) -> None:
        """Find the footer and read the trailer it points at, without reading what lies
        between; on failure keep the error in ``tail_error`` (a full walk explains better)."""
        size, footer_at = self.size, self.size - _FOOTER.size
        offset, magic = _FOOTER.unpack(self._pread(footer_at, _FOOTER.size)) if footer_at >= _HEADER.size else (0, b"")
        if magic != END_MAGIC:
            self.tail_error = BundleTruncatedError(
                f"{self.name} is truncated or damaged: it does not end with the bundle footer",
                hint="an export or a copy was cut short; make or copy it again",
            )
            return
        self.complete, self.bound, self.trailer_bound = True, footer_at, footer_at
        tail = _Reader(self.f, self.name, size, hashing=False)
        tail.complete, tail.bound, tail.trailer_bound, tail.where = True, footer_at, footer_at, "the trailer"
        try:
            if not _HEADER.size <= offset <= footer_at - _OVERHEAD:
                tail.where = "the footer"
                raise tail.corrupt(f"the footer points at byte {offset} for the trailer, outside the file")
            tail.seek(offset)
            _, payload, _ = tail.record((TRAILER,), f"the trailer the footer points at (byte {offset})")
            if tail.offset != footer_at:
                raise tail.corrupt(f"the trailer at byte {offset} does not end where the footer starts")
            self.trailer = tail.parse_trailer(payload, offset)
        except BundleError as exc:
            self.tail_error = exc
            return
        self.bound = offset

    def _pread(self, offset: int, n: int) -> bytes:
        self.f.seek(offset)
        return self.f.read(n)

    def parse_trailer(self, payload: bytes, start: int) -> _Trailer:
        trailer = self.json(payload, start, TRAILER)
        count = self.field(trailer, "part_count", int, "trailer")
        entries = self.field(trailer, "parts", list, "trailer")
        if len(entries) != count:
            raise self.corrupt(f"the trailer lists {len(entries)} parts but counts {count}")
        if count > MAX_PARTS:
            raise self.corrupt(f"the trailer lists {count} parts, more than the limit {MAX_PARTS}")
        parts = []
        for index, entry in enumerate(entries):
            what = f"trailer's entry for part {index + 1}"
            if not isinstance(entry, dict) or self.field(entry, "index", int, what) != index:
                raise self.corrupt(f"the {what} is not valid")
            summary = PartSummary(
                index,
                self.field(entry, "info", dict, what),
                self.field(entry, "size", int, what),
                self.field(entry, "digest", str, what),
                self.field(entry, "offset", int, what),
            )
            # ``inspect`` trusts these without reading the parts, and a reader preads
            # ``size`` bytes at ``offset``: each stream lies between the header and
            # the trailer (no negative or past-the-end offset, nothing beyond a u64).
            if not _HEADER.size + _OVERHEAD <= summary.offset <= start or summary.size > start - summary.offset:
                raise self.corrupt(
                    f"the {what} puts its {summary.size} stream bytes at byte {summary.offset}, "
                    f"outside the bundle's parts (bytes {_HEADER.size + _OVERHEAD} to {start})"
                )
            if not _MD5_HEX.fullmatch(summary.digest):
                raise self.corrupt(f"the {what} has a digest that is not 32 hexadecimal digits")
            parts.append(summary)
        total = self.field(trailer, "total_size", int, "trailer")
        if total != sum(part.size for part in parts):
            raise self.corrupt(f"the trailer's total size {total} is not the sum of its parts' sizes")
        structure = self.field(trailer, "structure_sha256", str, "trailer")
        if not _SHA256_HEX.fullmatch(structure):
            raise self.corrupt("the trailer's structure_sha256 is not 64 hexadecimal digits")
        return _Trailer(start, tuple(parts), total, structure)


# Reading is in two passes. The first (``_walk``) reads every record but no stream byte:
# the structure, every record's checksum, the chunk digests against their part's digest,
# the structure hash, the trailer and the footer; it is quick, so damage there and a
# truncation are found at once. The second reads the streams and checks each chunk.
def _walk(r: _Reader, version: int, metadata: dict[str, Any]) -> tuple[BundleInfo, list[_Part]]:
    """The records after the metadata, in order, to the end of the file."""
    parts: list[_Part] = []
    while True:
        index = len(parts)
        r.where = f"the start of part {index + 1} or the trailer"
        rtype, payload, start = r.record((PART_BEGIN, TRAILER), "a part begin record or the trailer")
        if rtype == TRAILER:
            return _finish(r, payload, start, version, metadata, parts), parts
        if index >= MAX_PARTS:
            raise r.corrupt(f"it holds more than {MAX_PARTS} parts, the limit")
        begin = r.json(payload, start, PART_BEGIN)
        if r.field(begin, "index", int, "part begin record") != index:
            raise r.corrupt(f"the part begin record at byte {start} is numbered {begin['index']}, not {index}")
        r.where = f"part {index + 1}"
        part = _read_part(r, index, r.field(begin, "info", dict, "part begin record"))
        if r.trailer is not None:  # compare each part as it is read: nothing piles up
            if index >= len(r.trailer.parts):
                raise r.corrupt(f"part {index + 1} is not in the trailer, which lists {len(r.trailer.parts)} parts")
            listed = r.trailer.parts[index]
            if part.summary() != listed:
                raise r.corrupt(f"the trailer's entry for part {index + 1} does not match the part")
            part = attrs.evolve(part, info=listed.info)  # one copy of the info, the trailer's
        else:  # the walk is only after a precise error: keep no info, memory stays small
            part = attrs.evolve(part, info=None)
        parts.append(part)


def _read_part(r: _Reader, index: int, info: dict[str, Any]) -> _Part:
    """A part's stream header, chunk digests and end record, seeking over the stream."""
    _, size, header_at, _ = r.head((STREAM,), f"the stream of part {index + 1}")
    start = r.offset
    digests_size = _chunk_count(size) * _CHUNK_DIGEST_SIZE
    # The stream, its digests and at least an empty end record must fit.
    if start + size + _OVERHEAD + digests_size + _OVERHEAD > r.bound:
        raise r.overrun(_KIND[STREAM], header_at, size, r.bound)
    r.seek(start + size)
    _, length, digests_head_at, head = r.head((CHUNK_DIGESTS,), f"the chunk digests of part {index + 1}")
    if length != digests_size:
        raise r.corrupt(
            f"the chunk digests record at byte {digests_head_at} claims {length} bytes, but a stream of {size} bytes "
            f"has {_chunk_count(size)} chunks, so {digests_size} bytes of digests"
        )
    check, digest = hashlib.sha256(head), hashlib.md5(usedforsecurity=False)
    for at in range(0, length, _PIECE):
        piece = r.read(min(_PIECE, length - at))
        check.update(piece)
        digest.update(piece)
    if r.read(_CHECK_SIZE) != check.digest():
        raise r.corrupt(f"checksum mismatch in the chunk digests record at byte {digests_head_at}")
    _, payload, end_at = r.record((PART_END,), f"the end record of part {index + 1}")
    end = r.json(payload, end_at, PART_END)
    what = "part end record"
    if r.field(end, "index", int, what) != index:
        raise r.corrupt(f"the part end record at byte {end_at} is numbered {end['index']}, not {index}")
    recorded = r.field(end, "size", int, what)
    if recorded != size:
        raise r.corrupt(f"the stream holds {size} bytes but the part end record at byte {end_at} says {recorded}")
    if r.field(end, "chunk_size", int, what) != CHUNK_SIZE or r.field(end, "algorithm", str, what) != CHUNK_ALGORITHM:
        raise r.corrupt(
            f"the part end record at byte {end_at} names chunks of {end['chunk_size']} bytes digested with "
            f"{end['algorithm']!r}; format {FORMAT_VERSION} has {CHUNK_SIZE} and {CHUNK_ALGORITHM!r}"
        )
    recorded_digest = r.field(end, "digest", str, what)
    if recorded_digest != digest.hexdigest():
        raise r.corrupt(
            f"the chunk digests at byte {digests_head_at} do not match the digest in the part end record "
            f"at byte {end_at}"
        )
    return _Part(index, info, start, size, digests_head_at + _RECORD.size, recorded_digest)


def _finish(
    r: _Reader, payload: bytes, start: int, version: int, metadata: dict[str, Any], parts: list[_Part]
) -> BundleInfo:
    r.where = "the trailer"
    if r.trailer is not None and r.trailer.offset != start:
        raise r.corrupt(f"a trailer record is at byte {start} but the footer points at byte {r.trailer.offset}")
    trailer = r.parse_trailer(payload, start)
    for found, listed in zip(parts, trailer.parts, strict=False):
        unkept = found.info is None  # compare all but the info then
        if (found.summary() if not unkept else attrs.evolve(found.summary(), info=listed.info)) != listed:
            raise r.corrupt(f"its entry for part {found.index + 1} does not match the part")
    if len(trailer.parts) != len(parts):
        raise r.corrupt(f"it lists {len(trailer.parts)} parts but the bundle holds {len(parts)}")
    if r.structure is not None and r.structure.hexdigest() != trailer.structure_sha256:
        raise r.corrupt(
            f"the sha256 of the bundle's structure (bytes 0 to {start} but the streams) "
            "does not match the one the trailer records"
        )
    r.where = "the footer"
    footer_at = r.offset
    offset, magic = _FOOTER.unpack(r.read(_FOOTER.size, hashed=False))
    if magic != END_MAGIC:
        raise r.corrupt(f"the footer at byte {footer_at} lacks its end marker")
    if offset != start:
        raise r.corrupt(f"the footer points at byte {offset} but the trailer is at byte {start}")
    if r.offset != r.size:
        raise r.corrupt(f"{r.size - r.offset} unexpected bytes follow the footer")
    return BundleInfo(version, metadata, trailer.parts, trailer.total_size, r.size, trailer.structure_sha256)


def _chunk_error(r: _Reader, part: _Part, chunk: int) -> BundleCorruptError:
    first = part.offset + chunk * CHUNK_SIZE
    last = min(first + CHUNK_SIZE, part.offset + part.size) - 1
    return r.corrupt(f"chunk {chunk + 1} of part {part.index + 1} (bytes {first}-{last}) does not match its digest")


def _changed_digests(r: _Reader, part: _Part) -> BundleCorruptError:
    return r.corrupt(f"the chunk digests of part {part.index + 1} changed while the part was being read")


class StreamCheckStopped(Exception):
    """A stream's check ended early because its caller asked it to (``stop``): it proved
    nothing about the stream."""


def _check_stream(
    r: _Reader,
    part: _Part,
    progress: ProgressFn | None,
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
        with closing(_stream_digests(r.fd, part.offset, part.size)) as windows:
            for at, length, found in windows:
                if stop is not None and stop.is_set():
                    raise StreamCheckStopped(f"the check of part {part.index + 1} was stopped")
                first = at // CHUNK_SIZE
                expected = r.pread(part.digests_at + first * _CHUNK_DIGEST_SIZE, len(found))
                digest.update(expected)
                if found != expected:
                    bad = next(
                        i
                        for i in range(0, len(found), _CHUNK_DIGEST_SIZE)
                        if found[i : i + _CHUNK_DIGEST_SIZE] != expected[i : i + _CHUNK_DIGEST_SIZE]
                    )
                    raise _chunk_error(r, part, first + bad // _CHUNK_DIGEST_SIZE)
                done += length
                if progress is not None:
                    progress(done, total)
    except _ShortRead as short:
        raise r.truncated(short.at) from None
    if digest.hexdigest() != part.digest:
        raise _changed_digests(r, part)
    return done


class _Streamer:
    """The chunks of each part, each checked before it goes out (``iter_parts``)."""

    def __init__(self, r: _Reader, progress: ProgressFn | None, total: int) -> None:
        self.r, self.progress, self.total = r, progress, total
        self.done = 0
        self.failed: BundleError | None = None

    def chunks(self, part: _Part) -> Iterator[bytes]:
        try:
            yield from self._read(part)
        except BundleError as exc:
            self.failed = exc
            raise

    def _read(self, part: _Part) -> Iterator[bytes]:
        r = self.r
        r.where = f"part {part.index + 1}"
        digest = hashlib.md5(usedforsecurity=False)
        # One chunk is held back until the next is checked, and the last until the part's
        # chunk digests are confirmed unchanged: a consumer feeding a receiver never hands
        # over a whole stream that is wrong.
        pending: bytes | None = None
        for chunk, at in enumerate(range(0, part.size, CHUNK_SIZE)):
            data = r.pread(part.offset + at, min(CHUNK_SIZE, part.size - at))
            expected = r.pread(part.digests_at + chunk * _CHUNK_DIGEST_SIZE, _CHUNK_DIGEST_SIZE)
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


def _open(f: BinaryIO, name: str) -> tuple[_Reader, int, dict[str, Any]]:
    """Header, footer and trailer (kept in the reader, or the reason it failed), metadata."""
    r = _Reader(f, name, os.fstat(f.fileno()).st_size)
    f.seek(0)  # an open file may have been read before (every pass starts from its start)
    version = r.header()
    r.probe_tail()  # first: it tells whether running out of data means truncation
    r.seek(_HEADER.size)
    r.where = "the metadata record"
    _, payload, start = r.record((METADATA,), "the metadata")
    return r, version, r.json(payload, start, METADATA)


def _structure(f: BinaryIO, name: str, expect: BundleInfo | None = None) -> tuple[_Reader, BundleInfo, list[_Part]]:
    """The first pass, whole; with ``expect``, refuse a bundle that differs from it."""
    r, version, metadata = _open(f, name)
    info, parts = _walk(r, version, metadata)
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
            _walk(r, version, metadata)  # for a precise error; failing that, the tail's own
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
    _reader: _Reader
    _parts: tuple[_Part, ...]

    def check_stream(
        self, index: int, *, progress: ProgressFn | None = None, done: int = 0, stop: threading.Event | None = None
    ) -> int:
        """Check part ``index``'s stream against its chunk digests (``BundleCorruptError``
        naming the chunk, ``BundleTruncatedError``); ``progress`` gets ``done`` plus the
        part's bytes checked so far, which it returns at the end. ``stop`` set ends it
        early with ``StreamCheckStopped``."""
        return _check_stream(self._reader, self._parts[index], progress, done, self.info.total_size, stop)


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
